// Unit tests of the bench's pieces that need no MPI job: list parsing, the
// percentiles, the CSV/JSON writers, the probe's read kernel and parameter matching.
#include <cmath>

#include "absl/strings/str_split.h"
#include "bench/bandwidth.h"
#include "bench/bench.h"
#include "bench/bench_model.h"
#include "engine/config.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

TEST(ParseSizeList, AcceptsKSuffixAndRejectsJunk) {
  auto v = ParseSizeList("1024, 4k,16K", "contexts", 1, 1 << 20);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, (std::vector<int64_t>{1024, 4096, 16384}));
  EXPECT_FALSE(ParseSizeList("", "contexts", 1, 100).ok());
  EXPECT_FALSE(ParseSizeList("1,x", "contexts", 1, 100).ok());
  EXPECT_FALSE(ParseSizeList("0", "contexts", 1, 100).ok());
  EXPECT_FALSE(ParseSizeList("1k", "contexts", 1, 100).ok());
}

TEST(Percentiles, MedianAndNearestRank) {
  EXPECT_DOUBLE_EQ(Median({3, 1, 2}), 2);
  EXPECT_DOUBLE_EQ(Median({4, 1, 2, 3}), 2.5);
  std::vector<double> ten = {10, 9, 8, 7, 6, 5, 4, 3, 2, 1};
  EXPECT_DOUBLE_EQ(NearestRankPercentile(ten, 0.9), 9);
  EXPECT_DOUBLE_EQ(NearestRankPercentile(ten, 1.0), 10);
  EXPECT_DOUBLE_EQ(NearestRankPercentile({5}, 0.9), 5);
  EXPECT_DOUBLE_EQ(NearestRankPercentile({1, 2, 3}, 0.9), 3);
}

TEST(Records, CsvHasOneCellPerFieldAndJsonRoundTrips) {
  BenchRecord r;
  r.set_model("a,\"b\"");
  r.set_attention("gla");
  r.set_tp(2);
  r.set_cache_bytes_per_rank(int64_t{1} << 40);
  r.set_step_ms_median(1.25);
  const std::vector<std::string> header = absl::StrSplit(CsvHeader(), ',');
  EXPECT_EQ(static_cast<int>(header.size()), BenchRecord::descriptor()->field_count());
  EXPECT_EQ(header.front(), "model");
  const std::string row = CsvRow(r);
  EXPECT_EQ(row.substr(0, 9), "\"a,\"\"b\"\"\"");
  // Cells after the quoted model: one per remaining field.
  const std::vector<std::string> rest = absl::StrSplit(row.substr(9), ',');
  EXPECT_EQ(rest.size(), header.size());  // leading empty piece + fields 2..n
  const std::string json = RecordJsonLine(r);
  EXPECT_EQ(json.find('\n'), std::string::npos);
  EXPECT_NE(json.find("\"cache_bytes_per_rank\":\"1099511627776\""), std::string::npos);
  EXPECT_NE(json.find("\"capacity_sequences\""), std::string::npos);  // zeros are printed too
  BenchRecord back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &back).ok());
  EXPECT_EQ(back.SerializeAsString(), r.SerializeAsString());
}

TEST(Bandwidth, ReadSumMatchesAPlainSum) {
  for (int64_t n : {0, 1, 7, 8, 63, 64, 65, 1000, 4099}) {
    std::vector<float> v(static_cast<size_t>(n));
    double exact = 0;
    for (int64_t i = 0; i < n; ++i) {
      v[i] = static_cast<float>((i * 37) % 101) * 0.01f;
      exact += v[i];
    }
    EXPECT_NEAR(ReadSum(v.data(), n), exact, 1e-5 * (exact + 1)) << n;
  }
}

TEST(Bandwidth, ProbeOnOneProcessGivesAPositiveRate) {
  LocalComm comm;
  auto result = ProbeBandwidth({8, 2}, comm);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->ranks, 1);
  EXPECT_GT(result->solo_gbs, 0);
  EXPECT_GT(result->PerRankGbs(), 0);
  EXPECT_DOUBLE_EQ(result->PerRankGbs(), result->total_gbs);
}

TEST(BenchModel, MatchedWidthsEqualizeParametersOfThePaperShapes) {
  for (const char* family : {"gqa", "gta", "mla", "gla", "mha"}) {
    BenchModelSpec spec;
    spec.preset = "paper-m";
    spec.attention = family;
    spec.layers = 4;
    auto width = MatchedIntermediate(spec, "gqa");
    ASSERT_TRUE(width.ok()) << width.status();
    spec.intermediate = *width;
    auto config = BenchModelConfig(spec);
    ASSERT_TRUE(config.ok());
    auto dims = ResolveDims(*config, "test");
    ASSERT_TRUE(dims.ok());
    BenchModelSpec ref = spec;
    ref.attention = "gqa";
    ref.intermediate = 0;
    auto ref_dims = ResolveDims(*BenchModelConfig(ref), "test");
    ASSERT_TRUE(ref_dims.ok());
    // Within half an MLP column (3·d parameters) per layer.
    const int64_t diff = std::llabs(MainParameters(*dims) - MainParameters(*ref_dims));
    EXPECT_LE(diff, 3 * 1024 * 4 / 2) << family << " width " << *width;
    if (std::string(family) == "gqa") {
      EXPECT_EQ(*width, 2816);
    }
  }
  EXPECT_EQ(BenchModelName({"paper-m", "gla", 4, 2635, DType::kF32, 0}),
            "paper-m-gla-L4-I2635-F32-s0");
}

}  // namespace
}  // namespace shardlm
