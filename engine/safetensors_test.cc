#include "engine/safetensors.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/half.h"
#include "base/rng.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

namespace fs = std::filesystem;

// `haystack` contains `needle`, printing both when not.
::testing::AssertionResult Contains(absl::string_view haystack, absl::string_view needle) {
  if (haystack.find(needle) != absl::string_view::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "\"" << haystack << "\" does not contain \"" << needle << "\"";
}

// A fresh directory per test, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "safetensors_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << tmpl;
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string dir_;
};

std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFileBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// [u64 LE header length][header][data]
std::string MakeImage(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string WithLength(uint64_t n, const std::string& rest) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + rest;
}

// Bits of x after storing it as `dtype` and widening back.
uint32_t ExpectedBits(float x, DType dtype) {
  float y = x;
  if (dtype == DType::kBF16) y = Bf16ToF32(F32ToBf16(x));
  if (dtype == DType::kF16) y = F16ToF32(F32ToF16(x));
  uint32_t bits;
  std::memcpy(&bits, &y, sizeof(bits));
  return bits;
}

uint32_t Bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

// A copy with exactly `n` bytes of storage, so a sanitizer sees any over-read.
struct ExactBuffer {
  explicit ExactBuffer(std::string_view s) : data(new char[s.size()]), size(s.size()) {
    if (!s.empty()) std::memcpy(data.get(), s.data(), s.size());
  }
  std::string_view view() const { return std::string_view(data.get(), size); }
  std::unique_ptr<char[]> data;
  size_t size;
};

// Reads every tensor of a parsed file fully; returns the number of values read.
int64_t ReadAll(const SafetensorsFile& file) {
  int64_t total = 0;
  for (const TensorInfo& t : file.tensors()) {
    const int64_t rows = t.shape.size() >= 2 ? t.shape[0] : 1;
    const int64_t n = t.NumElements();
    const int64_t cols = t.shape.size() >= 2 ? (rows == 0 ? 0 : n / rows) : n;
    std::vector<float> out(static_cast<size_t>(n));
    EXPECT_TRUE(file.ReadF32(t, 0, rows, 0, cols, out.data()).ok()) << t.name;
    total += n;
  }
  return total;
}

TEST(DTypeTest, NamesSizesAndParsing) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16, DType::kI8, DType::kU8}) {
    auto parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(DTypeBytes(DType::kF32), 4);
  EXPECT_EQ(DTypeBytes(DType::kBF16), 2);
  EXPECT_EQ(DTypeBytes(DType::kF16), 2);
  EXPECT_EQ(DTypeBytes(DType::kI8), 1);
  EXPECT_EQ(DTypeBytes(DType::kU8), 1);
  const auto bad = ParseDType("I16");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(Contains(bad.status().message(), "I16"));
  EXPECT_TRUE(Contains(bad.status().message(), "F32, BF16, F16, I8, U8"));
  // Block formats are weight formats (flags), never a file's element type.
  EXPECT_FALSE(ParseDType("Q4_0").ok());
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16, DType::kQ8_0, DType::kQ4_0}) {
    auto parsed = ParseWeightDType(DTypeName(d));
    ASSERT_TRUE(parsed.ok()) << DTypeName(d);
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(*ParseWeightDType("q4_0"), DType::kQ4_0);
  EXPECT_FALSE(ParseWeightDType("I8").ok());
  EXPECT_EQ(WeightRowBytes(DType::kQ8_0, 4096), 4096 + 256);  // 34 bytes per 32 weights
  EXPECT_EQ(WeightRowBytes(DType::kQ4_0, 4096), 2048 + 256);  // 18 bytes per 32 weights
}

TEST(SafetensorsRawTest, IntegerTensorsRoundTrip) {
  const std::string path = testing::TempDir() + "/raw_int.safetensors";
  const std::vector<uint8_t> i8 = {0x80, 0x7f, 0x00, 0xff, 0x01, 0x02};
  const std::vector<uint8_t> u8 = {1, 2, 3, 250};
  const TensorToWrite writes[] = {{"q", DType::kI8, {2, 3}, {}, i8}, {"u", DType::kU8, {4}, {}, u8}};
  ASSERT_TRUE(WriteSafetensors(path, writes).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorInfo* q = (*file)->Find("q");
  ASSERT_NE(q, nullptr);
  std::vector<uint8_t> stored(2);
  ASSERT_TRUE((*file)->ReadStored(*q, 1, 2, 1, 3, stored.data()).ok());
  EXPECT_EQ(stored, (std::vector<uint8_t>{0x01, 0x02}));
  std::vector<float> f(6);
  ASSERT_TRUE((*file)->ReadF32(*q, 0, 2, 0, 3, f.data()).ok());
  EXPECT_EQ(f, (std::vector<float>{-128, 127, 0, -1, 1, 2}));
  // I8 needs raw bytes of the right count.
  const std::vector<float> v(6, 1.0f);
  const TensorToWrite as_floats[] = {{"q", DType::kI8, {2, 3}, v}};
  EXPECT_FALSE(WriteSafetensors(path, as_floats).ok());
  const TensorToWrite short_raw[] = {{"q", DType::kI8, {2, 3}, {}, u8}};
  EXPECT_FALSE(WriteSafetensors(path, short_raw).ok());
}

TEST_F(SafetensorsTest, RoundTripAllDtypesAndSubBlocks) {
  struct Case {
    std::string name;
    std::vector<int64_t> shape;
    int64_t rows, cols;  // the 2-D view
  };
  const std::vector<Case> cases = {
      {"m.weight", {5, 7}, 5, 7},  {"t3", {3, 4, 5}, 3, 20}, {"v.bias", {13}, 1, 13},
      {"scalar", {}, 1, 1},        {"empty", {0, 3}, 0, 3},  {"one", {1, 1}, 1, 1},
      {"zero_cols", {4, 0}, 4, 0},
  };
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    Rng rng(42, DTypeName(dtype));
    std::vector<std::vector<float>> values;
    std::vector<TensorToWrite> writes;
    for (const Case& c : cases) {
      int64_t n = 1;
      for (int64_t d : c.shape) n *= d;
      values.push_back(rng.UniformVector(static_cast<size_t>(n), -4.0f, 4.0f));
    }
    // Special values in the largest tensor: signed zero, infinities, NaN, a
    // subnormal, and values that overflow F16.
    const float specials[] = {0.0f,   -0.0f,    INFINITY, -INFINITY, NAN,
                              1e-40f, 65504.0f, 7e4f,     -3e38f};
    for (size_t i = 0; i < std::size(specials); ++i) values[1][i] = specials[i];
    // The generator must actually vary, or transposed reads would go unnoticed.
    EXPECT_GT(std::set<float>(values[0].begin(), values[0].end()).size(), 30u);
    for (size_t i = 0; i < cases.size(); ++i) {
      writes.push_back({cases[i].name, dtype, cases[i].shape, values[i]});
    }
    const std::string path = Path(absl::StrCat("rt_", DTypeName(dtype), ".safetensors"));
    ASSERT_TRUE(WriteSafetensors(path, writes).ok());

    auto file_or = SafetensorsFile::Open(path);
    ASSERT_TRUE(file_or.ok()) << file_or.status();
    const SafetensorsFile& file = **file_or;
    ASSERT_EQ(file.tensors().size(), cases.size());
    // Data starts 8-byte aligned and tensors are laid out in write order.
    int64_t expected_offset = file.tensors()[0].offset;
    EXPECT_EQ(expected_offset % 8, 0);
    for (size_t i = 0; i < cases.size(); ++i) {
      const TensorInfo* t = file.Find(cases[i].name);
      ASSERT_NE(t, nullptr) << cases[i].name;
      EXPECT_EQ(t->dtype, dtype);
      EXPECT_EQ(t->shape, cases[i].shape);
      EXPECT_EQ(t->offset, expected_offset) << cases[i].name;
      EXPECT_EQ(t->bytes, t->NumElements() * DTypeBytes(dtype));
      expected_offset += t->bytes;
    }
    EXPECT_EQ(expected_offset, static_cast<int64_t>(fs::file_size(path)));

    for (size_t i = 0; i < cases.size(); ++i) {
      const Case& c = cases[i];
      SCOPED_TRACE(c.name);
      const TensorInfo& t = *file.Find(c.name);
      // Every sub-block of the 2-D view, exactly equal to the converted values.
      for (int64_t r0 = 0; r0 <= c.rows; ++r0) {
        for (int64_t r1 = r0; r1 <= c.rows; ++r1) {
          for (int64_t c0 = 0; c0 <= c.cols; ++c0) {
            for (int64_t c1 = c0; c1 <= c.cols; ++c1) {
              const int64_t br = r1 - r0, bc = c1 - c0;
              // Sentinels around the block catch out-of-range writes.
              std::vector<float> out(static_cast<size_t>(br * bc + 2), 12345.0f);
              ASSERT_TRUE(file.ReadF32(t, r0, r1, c0, c1, out.data() + 1).ok());
              ASSERT_EQ(out.front(), 12345.0f);
              ASSERT_EQ(out.back(), 12345.0f);
              for (int64_t r = 0; r < br; ++r) {
                for (int64_t k = 0; k < bc; ++k) {
                  const float src = values[i][(r0 + r) * c.cols + c0 + k];
                  ASSERT_EQ(Bits(out[1 + r * bc + k]), ExpectedBits(src, dtype))
                      << "block [" << r0 << "," << r1 << ")x[" << c0 << "," << c1 << ") at " << r
                      << "," << k;
                }
              }
            }
          }
        }
      }
    }

    // FromBytes over the same image gives the same answer.
    const ExactBuffer image(ReadFileBytes(path));
    auto mem = SafetensorsFile::FromBytes(image.view(), "mem");
    ASSERT_TRUE(mem.ok()) << mem.status();
    EXPECT_EQ(ReadAll(**mem), ReadAll(file));
  }
}

TEST_F(SafetensorsTest, NamesNeedingEscapesRoundTrip) {
  const std::vector<float> v = {1, 2};
  const std::string weird = "a\"b\\c\n\x01 é";
  const TensorToWrite writes[] = {{weird, DType::kF32, {2}, v}};
  const std::string path = Path("weird.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, writes).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_NE((*file)->Find(weird), nullptr);
}

TEST_F(SafetensorsTest, UnalignedDataAndMetadataAreAccepted) {
  // Header length 59 puts the data at byte 67: no alignment at all.
  std::string header =
      R"({"__metadata__":{"format":"pt"},"x":{"dtype":"F32","shape":[3],"data_offsets":[1,13]}})";
  const float vals[] = {1.5f, -2.25f, 3e-3f};
  std::string data(1, '\x7f');
  data.append(reinterpret_cast<const char*>(vals), sizeof(vals));
  const ExactBuffer image(MakeImage(header, data));
  auto file = SafetensorsFile::FromBytes(image.view(), "unaligned");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 1u);
  EXPECT_NE((*file)->tensors()[0].offset % 4, 0);
  float out[3];
  ASSERT_TRUE((*file)->ReadF32((*file)->tensors()[0], 0, 1, 0, 3, out).ok());
  EXPECT_EQ(out[0], vals[0]);
  EXPECT_EQ(out[1], vals[1]);
  EXPECT_EQ(out[2], vals[2]);

  // __metadata__ of any shape is skipped; holes in the data section are allowed.
  const ExactBuffer odd_meta(MakeImage(R"({"__metadata__":5})"));
  auto meta = SafetensorsFile::FromBytes(odd_meta.view(), "meta");
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_TRUE((*meta)->tensors().empty());
}

TEST_F(SafetensorsTest, ReadF32RejectsBadRangesAndForeignTensors) {
  const std::vector<float> v(12, 1.0f);
  const TensorToWrite writes[] = {{"w", DType::kBF16, {3, 4}, v}};
  const std::string path = Path("ranges.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, writes).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorInfo& t = (*file)->tensors()[0];
  std::vector<float> out(64);
  const int64_t bad[][4] = {{-1, 1, 0, 4}, {2, 1, 0, 4}, {0, 4, 0, 4},
                            {0, 3, -1, 4}, {0, 3, 3, 2}, {0, 3, 0, 5}};
  for (const auto& b : bad) {
    const absl::Status s = (*file)->ReadF32(t, b[0], b[1], b[2], b[3], out.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b[0] << b[1] << b[2] << b[3];
    EXPECT_TRUE(Contains(s.message(), "w"));
  }
  // A TensorInfo that does not describe this file's data is refused, not trusted.
  TensorInfo forged = t;
  forged.offset = 1 << 30;
  EXPECT_FALSE((*file)->ReadF32(forged, 0, 3, 0, 4, out.data()).ok());
  forged = t;
  forged.name = "other";
  EXPECT_FALSE((*file)->ReadF32(forged, 0, 3, 0, 4, out.data()).ok());
  // Copies are fine.
  const TensorInfo copy = t;
  EXPECT_TRUE((*file)->ReadF32(copy, 0, 3, 0, 4, out.data()).ok());
}

TEST_F(SafetensorsTest, OpenRejectsMissingEmptyAndDirectories) {
  const std::string missing = Path("nope.safetensors");
  auto s = SafetensorsFile::Open(missing);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.status().message(), missing));

  const std::string empty = Path("empty.safetensors");
  WriteFileBytes(empty, "");
  s = SafetensorsFile::Open(empty);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.status().message(), empty));
  EXPECT_TRUE(Contains(s.status().message(), "empty"));

  const std::string fifo = Path("fifo.safetensors");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  s = SafetensorsFile::Open(fifo);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.status().message(), fifo));

  const std::string sub = Path("sub.safetensors");
  ASSERT_TRUE(fs::create_directory(sub));
  s = SafetensorsFile::Open(sub);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.status().message(), sub));
  EXPECT_TRUE(Contains(s.status().message(), "directory"));
}

// Every malformed header named in the format contract, as raw bytes.
TEST(SafetensorsHostileTest, HeaderTable) {
  auto entry = [](const std::string& body) {
    return MakeImage("{\"w\":" + body + "}", std::string(64, '\0'));
  };
  struct Case {
    const char* what;
    std::string image;
    std::vector<std::string> words;
  };
  const std::vector<Case> cases = {
      {"5-byte file", std::string(5, '\0'), {"shorter than", "8"}},
      {"empty", "", {"shorter than"}},
      {"length 2^40", WithLength(uint64_t{1} << 40, "{}"), {"header length"}},
      {"length past end", WithLength(3, "{}"), {"header length 3", "exceeds"}},
      {"length over limit",
       WithLength(200'000'000, std::string(16, ' ')),
       {"header length", "limit"}},
      {"length zero", WithLength(0, "{}"), {"header length is 0"}},
      {"length negative", WithLength(~uint64_t{0}, "{}"), {"negative"}},
      {"length min int64", WithLength(uint64_t{1} << 63, "{}"), {"negative"}},
      {"not json", MakeImage("{\"w\":"), {"not valid JSON"}},
      {"garbage", MakeImage("\x01\x02garbage"), {"not a JSON object"}},
      {"array root", MakeImage("[1,2]"), {"not a JSON object"}},
      {"string root", MakeImage("\"x\""), {"not a JSON object"}},
      {"blank header", MakeImage("        "), {"not a JSON object"}},
      {"trailing junk", MakeImage("{} x"), {"not valid JSON"}},
      {"duplicate key", MakeImage(R"({"w":{},"w":{}})"), {"not valid JSON"}},
      {"unbalanced", MakeImage("{\"w\":]]]]" + std::string(5000, '[') + "}"), {"not valid JSON"}},
      {"deep nesting",
       MakeImage("{\"w\":" + std::string(5000, '[') + std::string(5000, ']') + "}"),
       {"nests deeper"}},
      {"entry not object", entry("5"), {"tensor \"w\"", "not a JSON object"}},
      {"entry array", entry("[]"), {"tensor \"w\"", "not a JSON object"}},
      {"missing dtype",
       entry(R"({"shape":[2],"data_offsets":[0,8]})"),
       {"tensor \"w\"", "missing \"dtype\""}},
      {"dtype number",
       entry(R"({"dtype":5,"shape":[2],"data_offsets":[0,8]})"),
       {"tensor \"w\"", "dtype"}},
      {"unsupported dtype",
       entry(R"({"dtype":"I16","shape":[2],"data_offsets":[0,4]})"),
       {"tensor \"w\"", "I16", "F32, BF16, F16, I8, U8"}},
      {"block format is not an element type",
       entry(R"({"dtype":"Q4_0","shape":[32],"data_offsets":[0,18]})"),
       {"tensor \"w\"", "Q4_0", "F32, BF16, F16, I8, U8"}},
      {"lowercase dtype",
       entry(R"({"dtype":"f32","shape":[2],"data_offsets":[0,8]})"),
       {"f32", "supported"}},
      {"missing shape",
       entry(R"({"dtype":"F32","data_offsets":[0,8]})"),
       {"tensor \"w\"", "missing \"shape\""}},
      {"shape string",
       entry(R"({"dtype":"F32","shape":"2","data_offsets":[0,8]})"),
       {"\"shape\" is not an array"}},
      {"shape of strings",
       entry(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})"),
       {"shape[0]"}},
      {"negative dim",
       entry(R"({"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]})"),
       {"shape[1]", "-1"}},
      {"fractional dim",
       entry(R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,8]})"),
       {"shape[0]", "1.5"}},
      {"dim 2^53",
       entry(R"({"dtype":"F32","shape":[9007199254740992],"data_offsets":[0,8]})"),
       {"shape[0]"}},
      {"dim 1e300", entry(R"({"dtype":"F32","shape":[1e300],"data_offsets":[0,8]})"), {"shape[0]"}},
      {"shape overflow",
       entry(R"({"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]})"),
       {"tensor \"w\"", "overflow"}},
      {"suffix overflow",
       entry(R"({"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]})"),
       {"overflow"}},
      {"missing offsets", entry(R"({"dtype":"F32","shape":[2]})"), {"missing \"data_offsets\""}},
      {"offsets string",
       entry(R"({"dtype":"F32","shape":[2],"data_offsets":"0,8"})"),
       {"data_offsets"}},
      {"offsets 3 ints",
       entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,16]})"),
       {"data_offsets"}},
      {"offsets 1 int",
       entry(R"({"dtype":"F32","shape":[2],"data_offsets":[8]})"),
       {"data_offsets"}},
      {"offsets negative",
       entry(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"),
       {"data_offsets"}},
      {"offsets fractional",
       entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,7.5]})"),
       {"data_offsets"}},
      {"begin > end",
       entry(R"({"dtype":"F32","shape":[2],"data_offsets":[16,8]})"),
       {"begin > end"}},
      {"end beyond data",
       entry(R"({"dtype":"F32","shape":[2],"data_offsets":[60,68]})"),
       {"tensor \"w\"", "beyond", "64-byte data section"}},
      {"huge end",
       entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,9007199254740991]})"),
       {"beyond"}},
      {"byte count",
       entry(R"({"dtype":"BF16","shape":[2,3],"data_offsets":[0,8]})"),
       {"tensor \"w\"", "8 bytes", "needs 12 bytes"}},
      {"overlap",
       MakeImage(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 std::string(16, '\0')),
       {"overlaps", "\"a\"", "\"b\""}},
      {"overlap nested",
       MakeImage(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                 std::string(16, '\0')),
       {"overlaps", "\"a\"", "\"b\""}},
      {"same range",
       MakeImage(R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
                 R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})",
                 std::string(4, '\0')),
       {"overlaps"}},
      {"binary name",
       MakeImage("{\"\\u0001bad\":5}"),
       {"tensor \"\\001bad\"", "not a JSON object"}},
      {"invalid utf8", MakeImage("{\"\xff\":5}"), {"not valid JSON"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const ExactBuffer image(c.image);
    const auto file = SafetensorsFile::FromBytes(image.view(), "hostile.safetensors");
    ASSERT_FALSE(file.ok());
    const std::string msg(file.status().message());
    EXPECT_TRUE(Contains(msg, "hostile.safetensors"));
    for (const std::string& w : c.words) EXPECT_TRUE(Contains(msg, w));
  }
}

TEST(SafetensorsHostileTest, HugeNameIsShortenedInMessages) {
  const std::string name(100000, 'n');
  const ExactBuffer image(MakeImage("{\"" + name + "\":5}"));
  const auto file = SafetensorsFile::FromBytes(image.view(), "big");
  ASSERT_FALSE(file.ok());
  EXPECT_LT(file.status().message().size(), 1000u);
  EXPECT_TRUE(Contains(file.status().message(), "100000 bytes"));
}

std::string SmallValidImage(const std::string& dir) {
  const std::vector<float> a = {1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12, 13, -14, 15};
  const std::vector<float> b = {0.5f, 0.25f, -0.125f, 8.0f};
  const TensorToWrite writes[] = {{"a", DType::kBF16, {3, 5}, a}, {"b", DType::kF32, {4}, b}};
  const std::string path = (fs::path(dir) / "small.safetensors").string();
  EXPECT_TRUE(WriteSafetensors(path, writes).ok());
  return ReadFileBytes(path);
}

TEST_F(SafetensorsTest, EveryTruncationFailsCleanly) {
  const std::string full = SmallValidImage(dir_);
  ASSERT_GT(full.size(), 100u);
  for (size_t len = 0; len < full.size(); ++len) {
    const ExactBuffer prefix(std::string_view(full).substr(0, len));
    const auto file = SafetensorsFile::FromBytes(prefix.view(), "prefix");
    ASSERT_FALSE(file.ok()) << "prefix of " << len << " bytes parsed";
    EXPECT_TRUE(Contains(file.status().message(), "prefix"));
  }
  const ExactBuffer whole(full);
  const auto file = SafetensorsFile::FromBytes(whole.view(), "whole");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(ReadAll(**file), 19);
}

// Random byte flips in the length field and header must never crash, hang or
// over-read (run under SHARDLM_SANITIZE to check the latter); whatever parses
// must read back fully.
TEST_F(SafetensorsTest, RandomHeaderMutationsNeverCrash) {
  const std::string valid = SmallValidImage(dir_);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(valid[i]);
  const size_t mutable_bytes = 8 + static_cast<size_t>(header_len);
  // JSON punctuation and digits reach deeper into the parser than random bytes.
  const std::string alphabet = "{}[]\":,-.0123456789eE \\'nul";
  Rng rng(2024);
  int ok_count = 0, error_count = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::string image = valid;
    const int flips = 1 + static_cast<int>(rng.NextU64() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t pos = rng.NextU64() % mutable_bytes;
      const uint64_t r = rng.NextU64();
      if (r % 3 == 0) {
        image[pos] = static_cast<char>(image[pos] ^ (1 << (r / 3 % 8)));
      } else if (r % 3 == 1) {
        image[pos] = static_cast<char>(r >> 8);
      } else {
        image[pos] = alphabet[(r >> 8) % alphabet.size()];
      }
    }
    const ExactBuffer buffer(image);
    const auto file = SafetensorsFile::FromBytes(buffer.view(), "mutant");
    if (file.ok()) {
      ++ok_count;
      ReadAll(**file);
    } else {
      ++error_count;
      EXPECT_TRUE(Contains(file.status().message(), "mutant"));
    }
  }
  RecordProperty("parsed", ok_count);
  // Both outcomes occur, or the loop is not exercising anything.
  EXPECT_GT(ok_count, 0);
  EXPECT_GT(error_count, 1000);
}

TEST_F(SafetensorsTest, WriteRejectsBadInputAndReportsIoErrors) {
  const std::vector<float> v(6, 1.0f);
  const TensorToWrite wrong_count[] = {{"w", DType::kF32, {2, 2}, v}};
  absl::Status s = WriteSafetensors(Path("x.safetensors"), wrong_count);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.message(), "w"));
  EXPECT_TRUE(Contains(s.message(), "[2, 2]"));
  EXPECT_TRUE(Contains(s.message(), "6 values"));

  const TensorToWrite dup[] = {{"w", DType::kF32, {6}, v}, {"w", DType::kF32, {6}, v}};
  EXPECT_FALSE(WriteSafetensors(Path("x.safetensors"), dup).ok());
  const TensorToWrite reserved[] = {{"__metadata__", DType::kF32, {6}, v}};
  EXPECT_FALSE(WriteSafetensors(Path("x.safetensors"), reserved).ok());
  const TensorToWrite negative[] = {{"w", DType::kF32, {-6}, v}};
  EXPECT_FALSE(WriteSafetensors(Path("x.safetensors"), negative).ok());
  const TensorToWrite bad_utf8[] = {{"\xff", DType::kF32, {6}, v}};
  EXPECT_FALSE(WriteSafetensors(Path("x.safetensors"), bad_utf8).ok());

  const std::string unwritable = Path("no_such_dir/x.safetensors");
  const TensorToWrite fine[] = {{"w", DType::kF32, {6}, v}};
  s = WriteSafetensors(unwritable, fine);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.message(), unwritable));
  if (fs::exists("/dev/full")) {
    s = WriteSafetensors("/dev/full", fine);
    ASSERT_FALSE(s.ok());
    EXPECT_TRUE(Contains(s.message(), "/dev/full"));
  }
  // An empty tensor list is a valid (empty) checkpoint file.
  ASSERT_TRUE(WriteSafetensors(Path("none.safetensors"), {}).ok());
  auto file = SafetensorsFile::Open(Path("none.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
}

TEST_F(SafetensorsTest, DirMergesFilesAndTracksUse) {
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};
  const std::vector<float> y = {7, 8};
  std::vector<float> q(64 * 32);
  for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>(i);
  const std::string q_name = "model.layers.0.self_attn.q_proj.weight";
  const TensorToWrite first[] = {{"x", DType::kF16, {2, 3}, x}, {"y", DType::kBF16, {2}, y}};
  const TensorToWrite second[] = {{q_name, DType::kF32, {64, 32}, q}};
  ASSERT_TRUE(WriteSafetensors(Path("model-00002-of-00002.safetensors"), second).ok());
  ASSERT_TRUE(WriteSafetensors(Path("model-00001-of-00002.safetensors"), first).ok());
  WriteFileBytes(Path("config.json"), "{}");
  WriteFileBytes(Path("model.safetensors.index.json"),
                 absl::StrCat(R"({"metadata": {"total_size": 8236}, "weight_map": {"x": )",
                              R"("model-00001-of-00002.safetensors", "y": )",
                              R"("model-00001-of-00002.safetensors", ")", q_name,
                              R"(": "model-00002-of-00002.safetensors"}})"));

  auto dir_or = SafetensorsDir::Open(dir_);
  ASSERT_TRUE(dir_or.ok()) << dir_or.status();
  SafetensorsDir& dir = **dir_or;
  EXPECT_TRUE(dir.Has("x"));
  EXPECT_TRUE(dir.Has(q_name));
  EXPECT_FALSE(dir.Has("z"));
  ASSERT_TRUE(dir.Shape(q_name).ok());
  EXPECT_EQ(*dir.Shape(q_name), (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(dir.Unused(), (std::vector<std::string>{q_name, "x", "y"}));

  std::vector<float> out(6);
  const int64_t x_shape[] = {2, 3};
  ASSERT_TRUE(dir.Read("x", x_shape, 1, 2, 0, 3, out.data()).ok());
  EXPECT_EQ(out[0], 4);
  EXPECT_EQ(out[2], 6);
  dir.MarkUsed("y");
  dir.MarkUsed("not_a_tensor");  // ignored
  EXPECT_EQ(dir.Unused(), (std::vector<std::string>{q_name}));

  const int64_t wrong[] = {64, 48};
  absl::Status s = dir.Read(q_name, wrong, 0, 64, 0, 48, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), absl::StrCat("tensor ", q_name, " in ", dir_,
                                      " has shape [64, 32], expected [64, 48]"));
  EXPECT_EQ(dir.Unused(), (std::vector<std::string>{q_name}));  // a failed read does not count

  s = dir.Read("nope", wrong, 0, 1, 0, 1, out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), absl::StrCat("missing tensor nope in ", dir_));
  EXPECT_EQ(dir.Shape("nope").status().message(), absl::StrCat("missing tensor nope in ", dir_));

  // Column block of the big tensor, then nothing is unused.
  std::vector<float> block(64 * 5);
  const int64_t q_shape[] = {64, 32};
  ASSERT_TRUE(dir.Read(q_name, q_shape, 0, 64, 10, 15, block.data()).ok());
  EXPECT_EQ(block[0], 10);
  EXPECT_EQ(block[5 * 63 + 4], 63 * 32 + 14);
  EXPECT_TRUE(dir.Unused().empty());
}

// A sharded checkpoint as published: the index names the files and each tensor's file; other
// *.safetensors files in the directory are not part of it; disagreements are errors.
TEST_F(SafetensorsTest, DirFollowsTheIndex) {
  const std::vector<float> v = {1, 2};
  const TensorToWrite a[] = {{"a.weight", DType::kF32, {2}, v}};
  const TensorToWrite b[] = {{"b.weight", DType::kF32, {2}, v}};
  ASSERT_TRUE(WriteSafetensors(Path("model-00001-of-00002.safetensors"), a).ok());
  ASSERT_TRUE(WriteSafetensors(Path("model-00002-of-00002.safetensors"), b).ok());
  // A consolidated copy beside the shards, as some repositories ship: not loaded.
  const TensorToWrite both[] = {{"a.weight", DType::kF32, {2}, v},
                                {"b.weight", DType::kF32, {2}, v}};
  ASSERT_TRUE(WriteSafetensors(Path("consolidated.safetensors"), both).ok());
  auto index = [&](const std::string& map) {
    WriteFileBytes(Path("model.safetensors.index.json"),
                   absl::StrCat(R"({"metadata": {}, "weight_map": {)", map, "}}"));
  };
  index(R"("a.weight": "model-00001-of-00002.safetensors",
           "b.weight": "model-00002-of-00002.safetensors")");
  auto d = SafetensorsDir::Open(dir_);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ((*d)->Unused(), (std::vector<std::string>{"a.weight", "b.weight"}));

  const std::pair<std::string, std::string> cases[] = {
      // The index puts a tensor in the wrong file.
      {R"("a.weight": "model-00002-of-00002.safetensors",
          "b.weight": "model-00002-of-00002.safetensors")",
       "tensor \"a.weight\" is not in model-00002-of-00002.safetensors"},
      // A tensor of a listed file that the index does not list.
      {R"("a.weight": "consolidated.safetensors")",
       "tensor \"b.weight\" is in consolidated.safetensors but not in the index"},
      // A listed file that does not exist.
      {R"("a.weight": "model-00001-of-00002.safetensors",
          "b.weight": "model-00002-of-00002.safetensors", "c.weight": "model-3.safetensors")",
       "model-3.safetensors"},
      // File names stay inside the directory.
      {R"("a.weight": "../model-00001-of-00002.safetensors")", "bad file name"},
  };
  for (const auto& [map, needle] : cases) {
    index(map);
    d = SafetensorsDir::Open(dir_);
    ASSERT_FALSE(d.ok()) << map;
    EXPECT_TRUE(Contains(d.status().message(), needle)) << d.status().message();
  }
  WriteFileBytes(Path("model.safetensors.index.json"), R"({"metadata": {}})");
  d = SafetensorsDir::Open(dir_);
  ASSERT_FALSE(d.ok());
  EXPECT_TRUE(Contains(d.status().message(), "no \"weight_map\"")) << d.status().message();
}

TEST_F(SafetensorsTest, DirErrors) {
  // Missing directory.
  const std::string missing = Path("missing");
  auto d = SafetensorsDir::Open(missing);
  ASSERT_FALSE(d.ok());
  EXPECT_TRUE(Contains(d.status().message(), missing));

  // No checkpoint files.
  WriteFileBytes(Path("config.json"), "{}");
  d = SafetensorsDir::Open(dir_);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().message(), absl::StrCat("no *.safetensors file in ", dir_));

  // A name in two files names both files.
  const std::vector<float> v = {1, 2};
  const TensorToWrite w[] = {{"shared.weight", DType::kF32, {2}, v}};
  ASSERT_TRUE(WriteSafetensors(Path("a.safetensors"), w).ok());
  ASSERT_TRUE(WriteSafetensors(Path("b.safetensors"), w).ok());
  d = SafetensorsDir::Open(dir_);
  ASSERT_FALSE(d.ok());
  const std::string msg(d.status().message());
  EXPECT_TRUE(Contains(msg, "shared.weight"));
  EXPECT_TRUE(Contains(msg, Path("a.safetensors")));
  EXPECT_TRUE(Contains(msg, Path("b.safetensors")));

  // A malformed file is named.
  fs::remove(Path("b.safetensors"));
  WriteFileBytes(Path("c.safetensors"), "garbage!garbage!");
  d = SafetensorsDir::Open(dir_);
  ASSERT_FALSE(d.ok());
  EXPECT_TRUE(Contains(d.status().message(), Path("c.safetensors")));
}

}  // namespace
}  // namespace shardlm
