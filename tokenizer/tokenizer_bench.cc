// Load time of a tokenizer.json and encode throughput on English prose, one core (a benchmark,
// not a test). usage: tokenizer_bench MODEL_DIR TEXT_FILE...
// The text is encoded twice: the first pass starts with an empty word cache, the second finds
// every word in it (a server's steady state).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "base/malloc_tuning.h"
#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR TEXT_FILE...\n", argv[0]);
    return 2;
  }
  shardlm::TuneMalloc();  // as the shardlm executable does
  using Clock = std::chrono::steady_clock;
  auto seconds = [](Clock::time_point a) {
    return std::chrono::duration<double>(Clock::now() - a).count();
  };
  std::string text;
  for (int i = 2; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    text += s.str();
    text += "\n";
  }
  const auto load_start = Clock::now();
  auto tok = shardlm::Tokenizer::Load(argv[1]);
  const double load = seconds(load_start);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  std::printf("load %s: %.3f s\n", argv[1], load);
  for (const char* pass : {"cold cache", "warm cache"}) {
    const auto start = Clock::now();
    const size_t tokens = (*tok)->Encode(text, false).size();
    const double s = seconds(start);
    std::printf("encode (%s): %.2f MB in %.3f s = %.1f MB/s, %zu tokens (%.2f bytes/token)\n", pass,
                text.size() / 1e6, s, text.size() / 1e6 / s, tokens,
                static_cast<double>(text.size()) / tokens);
  }
  return 0;
}
