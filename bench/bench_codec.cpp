// Codec throughput (make bench): small control frames and 64 KiB bodies.
#include <benchmark/benchmark.h>

#include <string>

#include "proto/frame.hpp"

using namespace cskit::proto;

namespace {

void encode_small(benchmark::State& state) {
  const json header = {{"type", "ping"}, {"id", 123456}};
  std::string out;
  for (auto _ : state) {
    out.clear();
    encode_frame(out, header, {});
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(encode_small);

void decode_small(benchmark::State& state) {
  // 1,000 frames back to back, as a busy connection delivers them.
  std::string stream;
  for (int i = 0; i < 1000; ++i) encode_frame(stream, {{"type", "ping"}, {"id", 100000 + i}}, {});
  frame_decoder d;
  frame f;
  for (auto _ : state) {
    std::string_view in(stream);
    while (!in.empty()) {
      d.decode(in, f);
      benchmark::DoNotOptimize(f.header);
    }
  }
  state.SetItemsProcessed(state.iterations() * 1000);
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(stream.size()));
}
BENCHMARK(decode_small);

void encode_64k(benchmark::State& state) {
  const json header = {{"type", "data"}, {"id", 7}};
  const std::string body(64 * 1024, 'b');
  std::string out;
  out.reserve(body.size() + 64);
  for (auto _ : state) {
    out.clear();
    encode_frame(out, header, body);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(body.size()));
}
BENCHMARK(encode_64k);

void decode_64k(benchmark::State& state) {
  std::string stream;
  for (int i = 0; i < 16; ++i) encode_frame(stream, {{"type", "data"}, {"id", i}}, std::string(64 * 1024, 'b'));
  frame_decoder d;
  frame f;
  for (auto _ : state) {
    std::string_view in(stream);
    while (!in.empty()) {
      d.decode(in, f);
      benchmark::DoNotOptimize(f.body.data());
    }
  }
  state.SetItemsProcessed(state.iterations() * 16);
  state.SetBytesProcessed(state.iterations() * 16 * 64 * 1024);
}
BENCHMARK(decode_64k);

}  // namespace

BENCHMARK_MAIN();
