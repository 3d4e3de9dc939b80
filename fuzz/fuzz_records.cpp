// libFuzzer target for the binary records peers send about files (make
// fuzz): packed listings (proto/listing) and delta transfer's group,
// chunk, index and range records (util/delta). The first input byte picks the
// decoder, the rest is the body. Invariants: what decodes re-encodes to
// the same bytes (listings: to a body that decodes to the same entries),
// groups never reach past the size they describe, and each requested
// group's chunks add up to it exactly.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "proto/listing.hpp"
#include "util/delta.hpp"

using namespace cskit;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

void listing(std::string_view body) {
  auto entries = proto::unpack_entries(body);
  if (!entries) return;
  auto again = proto::unpack_entries(proto::pack_entries(*entries));
  check(again && *again == *entries);
}

void groups(std::string_view body) {
  // The size is taken from the records themselves, so that some decode.
  std::uint64_t size = 0;
  for (std::size_t at = 0; at + 16 <= body.size(); at += 16) {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(body[at + static_cast<std::size_t>(i)]);
    size += v;
  }
  std::vector<util::delta::group> got;
  if (!util::delta::decode_more_groups(body, size, true, got)) return;
  check(util::delta::encode_groups(got) == body);
  std::uint64_t end = 0;
  for (const auto& g : got) {
    check(g.offset == end && g.bytes > 0);
    end += g.bytes;
  }
  check(end == size);
}

void chunks(std::string_view body) {
  // Two groups of 1 MiB and 100 bytes, both asked for.
  const std::vector<util::delta::group> groups = {{0, 1u << 20, 0, 0, 0}, {1u << 20, 100, 0, 0, 0}};
  const std::vector<std::uint32_t> which = {0, 1};
  auto got = util::delta::decode_chunks(body, groups, which);
  if (!got) return;
  std::uint64_t end = 0;
  for (const auto& c : *got) {
    check(c.offset == end && c.length > 0);
    end += c.length;
  }
  check(end == (1u << 20) + 100);
}

void indices(std::string_view body) {
  auto got = util::delta::decode_indices(body, 1000);
  if (!got) return;
  check(util::delta::encode_indices(*got) == body);
  for (std::size_t i = 0; i < got->size(); ++i) check((*got)[i] < 1000 && (i == 0 || (*got)[i - 1] < (*got)[i]));
}

void ranges(std::string_view body) {
  constexpr std::uint64_t size = 1u << 30;
  auto got = util::delta::decode_ranges(body, size);
  if (!got) return;
  check(util::delta::encode_ranges(*got) == body);
  std::uint64_t end = 0;
  for (const auto& r : *got) {
    check(r.length > 0 && r.offset >= end && r.offset + r.length <= size);
    end = r.offset + r.length;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 5) {
    case 0: listing(body); break;
    case 1: groups(body); break;
    case 2: chunks(body); break;
    case 3: indices(body); break;
    default: ranges(body); break;
  }
  return 0;
}
