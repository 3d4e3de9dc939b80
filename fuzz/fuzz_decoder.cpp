// libFuzzer target for the frame decoder (make fuzz).
//
// The first input byte picks the chunk size the rest is fed in (1..64
// bytes), so splits at arbitrary offsets are explored too, and (bit 6)
// whether bodies are streamed (report_headers/stream_body, as the server
// does for put.data). Every frame the decoder accepts must satisfy the
// header invariants and survive an encode/decode round trip unchanged; a
// streamed body must arrive whole, in pieces, exactly as declared.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "proto/frame.hpp"
#include "proto/utf8.hpp"

using namespace cskit::proto;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

void round_trip(const frame& f) {
  json header = f.header;
  header.erase("body");
  std::string encoded;
  if (encode_frame(encoded, header, f.body) != errc::ok) return;  // re-serialised JSON may be longer
  frame_decoder d;
  std::string_view in(encoded);
  frame again;
  check(d.decode(in, again) == frame_decoder::status::frame);
  check(in.empty());
  json again_header = again.header;
  again_header.erase("body");
  check(again_header == header);
  check(again.body == f.body);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t chunk = (data[0] % 64) + 1;
  const bool streaming = data[0] & 64;
  std::string_view all(reinterpret_cast<const char*>(data + 1), size - 1);
  frame_decoder d;
  d.report_headers(streaming);
  std::uint64_t streamed = 0;
  bool in_stream = false;
  for (std::size_t off = 0; off < all.size(); off += chunk) {
    std::string_view in = all.substr(off, chunk);
    while (!in.empty() || d.frame_pending()) {
      frame f;
      auto st = d.decode(in, f);
      if (st == frame_decoder::status::error) {
        check(d.error() != errc::ok);
        return 0;
      }
      if (st == frame_decoder::status::need_more) break;
      if (st == frame_decoder::status::header) {
        check(streaming && !in_stream);
        check(d.current_header().value("body", std::uint64_t{0}) > 0);
        in_stream = true;
        streamed = 0;
        d.stream_body();
        continue;
      }
      if (st == frame_decoder::status::body_part) {
        check(in_stream && !d.body_part().empty());
        streamed += d.body_part().size();
        continue;
      }
      check(f.header.is_object());
      check(!f.type().empty());
      check(f.body.size() <= max_body_size);
      if (in_stream) {
        check(f.body.empty());
        check(streamed == f.header.value("body", std::uint64_t{0}));
        in_stream = false;
        continue;
      }
      check(f.body.size() == f.header.value("body", std::uint64_t{0}));
      round_trip(f);
    }
  }
  return 0;
}
