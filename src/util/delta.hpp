#pragma once
// Delta transfer: content-defined chunking (FastCDC's gear hash with
// normalised chunking), the signatures the two sides exchange, and the
// plan that rebuilds a file from the receiver's old copy (its *basis*)
// plus the bytes it lacks. Pure computation apart from chunk_file, which
// reads a descriptor. docs/architecture.md ("Delta transfer") says why
// chunks are content-defined; docs/protocol.md gives the records' layout.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace cskit::util::delta {

/// Chunk sizes for a file: `avg` is a power of two, min = avg/4,
/// max = avg*4. Both sides derive them from the size of the file being
/// sent (params_for), so that they cut the same content at the same places.
struct params {
  unsigned avg_bits = 14;
  std::uint32_t min = 4u << 10, avg = 16u << 10, max = 64u << 10;
};
/// 16 KiB chunks on average up to 1 GiB, then larger (about 65,536 chunks
/// a file), up to 4 MiB (16 MiB at most for one chunk). Small chunks cost
/// little on the wire: only the groups of a basis are sent whole, the
/// chunks only of the groups that differ.
params params_for(std::uint64_t size) noexcept;
/// Params with avg = 2^avg_bits (for tests).
params params_with(unsigned avg_bits) noexcept;

struct chunk {
  std::uint64_t offset = 0;  ///< in its file
  std::uint32_t length = 0;
  std::uint64_t hash = 0;  ///< XXH3-64 of the chunk's bytes
};

/// Cuts a stream of bytes into chunks as they arrive.
class chunker {
 public:
  explicit chunker(params p);
  ~chunker();
  chunker(const chunker&) = delete;
  chunker& operator=(const chunker&) = delete;
  /// Appends to `out` every chunk that ends within these bytes.
  void feed(const void* data, std::size_t n, std::vector<chunk>& out);
  /// The last chunk, shorter than the rest may be (none if no bytes are left).
  void finish(std::vector<chunk>& out);

 private:
  void cut(std::vector<chunk>& out);
  params p_;
  std::uint64_t mask_small_, mask_large_;
  std::uint64_t h_ = 0;
  std::uint64_t offset_ = 0;
  std::uint32_t len_ = 0;
  void* state_;  // XXH3_state_t
};

/// What chunk_file shows of its work as it goes.
struct reading {
  std::function<void(std::string_view bytes)> observe;  ///< each block read, in order (a digest)
  std::function<bool(bool done)> progress;               ///< after each block; false stops the reading
};
/// Reads bytes [0, size) of `fd` from the start and appends its chunks to
/// `out` as they are cut (the last call of `progress` has done = true and
/// sees them all). False when the file cannot be read as that long, or
/// when `progress` stopped it.
bool chunk_file(int fd, std::uint64_t size, params p, std::vector<chunk>& out, const reading& r = {});

/// Runs of chunks. A group ends after a chunk whose hash is 0 modulo 64
/// (so about 64 chunks, content-defined: an edit moves only the groups
/// around it), after 256 chunks, or at the end of the file.
struct group {
  std::uint64_t offset = 0;
  std::uint64_t bytes = 0;
  std::uint64_t hash = 0;  ///< XXH3-64 of the group's chunk records
  std::size_t first = 0, count = 0;  ///< its chunks (in the list it was made from)
};
std::vector<group> group_chunks(const std::vector<chunk>& chunks);
/// group_chunks as the chunks come: `chunks` is the list so far (it only
/// grows); each call appends the groups completed since the last.
class grouper {
 public:
  void add(const std::vector<chunk>& chunks, std::vector<group>& out);
  void finish(const std::vector<chunk>& chunks, std::vector<group>& out);  ///< the last group, shorter

 private:
  void close(std::vector<group>& out);
  std::size_t next_ = 0;  // the first chunk not yet in a group
  group open_;
  std::string records_;
};

/// Where the basis has a group or chunk of a given hash and size.
class basis_index {
 public:
  void add(std::uint64_t hash, std::uint64_t bytes, std::uint64_t offset);
  std::optional<std::uint64_t> find(std::uint64_t hash, std::uint64_t bytes) const;

 private:
  struct entry {
    std::uint64_t bytes, offset;
  };
  std::unordered_multimap<std::uint64_t, entry> map_;
};

/// On the wire: a group is 16 bytes (bytes, hash: u64 big-endian each), a
/// chunk 12 (length u32, hash u64, big-endian).
inline constexpr std::size_t group_record = 16;
inline constexpr std::size_t chunk_record = 12;
std::string encode_groups(const std::vector<group>& groups);
/// The groups of a basis of `size` bytes, with their offsets; nullopt when
/// the records are malformed or do not add up to `size` exactly.
std::optional<std::vector<group>> decode_groups(std::string_view body, std::uint64_t size);
/// The same for groups that come in batches: appends to `groups` (offsets
/// continue from its last); false when a record is malformed, the groups
/// go past `size`, or, for the `last` batch, do not reach it.
bool decode_more_groups(std::string_view body, std::uint64_t size, bool last, std::vector<group>& groups);
/// The chunk records of the groups `which` (indices into `groups`, in
/// that order).
std::string encode_chunks(const std::vector<chunk>& chunks, const std::vector<group>& groups,
                          const std::vector<std::uint32_t>& which);
/// Reads what encode_chunks wrote for `which`: each group's chunks must add
/// up to its size exactly. nullopt when they do not.
std::optional<std::vector<chunk>> decode_chunks(std::string_view body, const std::vector<group>& groups,
                                                const std::vector<std::uint32_t>& which);
/// Group indices as u32 big-endian (a put.chunks body), and back: nullopt
/// unless strictly increasing and below `count`.
std::string encode_indices(const std::vector<std::uint32_t>& which);
std::optional<std::vector<std::uint32_t>> decode_indices(std::string_view body, std::size_t count);

/// One step of rebuilding: `length` bytes copied from the basis at `from`,
/// or taken from the source file at `from` (literal: sent on the wire).
struct op {
  enum kind : std::uint8_t { literal, copy } what = literal;
  std::uint64_t from = 0;
  std::uint64_t length = 0;
  bool operator==(const op&) const = default;
};

/// The basis groups (indices) that no group of the source has: the
/// sender asks for their chunks, to find what they still share.
std::vector<std::uint32_t> unmatched_groups(const std::vector<group>& source, const std::vector<group>& basis);
/// How to rebuild the source (its chunks and groups) from the basis: whole
/// groups the basis has, then single chunks among `basis_chunks` (those of
/// the unmatched groups), the rest literal. Adjacent steps are merged.
std::vector<op> plan_ops(const std::vector<chunk>& source, const std::vector<group>& source_groups,
                         const std::vector<group>& basis_groups, const std::vector<chunk>& basis_chunks);
/// The same for a download, where the receiver holds the basis: how to
/// rebuild the sender's file (its groups, and the chunks of its groups
/// `wanted` as decode_chunks read them) from the receiver's own old copy
/// (`basis`, `basis_groups`). Copies name offsets in the basis, literals
/// offsets in the sender's file: the ranges to ask for.
std::vector<op> plan_fetch(const std::vector<group>& source_groups, const std::vector<std::uint32_t>& wanted,
                           const std::vector<chunk>& source_chunks, const std::vector<chunk>& basis,
                           const std::vector<group>& basis_groups);

/// Byte ranges of a file (a get.ranges body): 16 bytes each, offset and
/// length (u64 big-endian). Decoding wants them non-empty, increasing,
/// not overlapping and within `size`; nullopt otherwise.
struct range {
  std::uint64_t offset = 0, length = 0;
  bool operator==(const range&) const = default;
};
inline constexpr std::size_t range_record = 16;
std::string encode_ranges(const std::vector<range>& ranges);
std::optional<std::vector<range>> decode_ranges(std::string_view body, std::uint64_t size);

/// Bytes the steps copy from the basis.
std::uint64_t copied_bytes(const std::vector<op>& ops) noexcept;

}  // namespace cskit::util::delta
