#pragma once
// The pieces of a download (client/download.hpp) that its two source files
// share: download.cpp (planning, the transfer, commits) and
// download_delta.cpp (rebuilding a file from an older local copy).

#include <sys/stat.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "client/download.hpp"
#include "proto/frame.hpp"
#include "util/delta.hpp"
#include "util/digest.hpp"
#include "util/file_io.hpp"

namespace cskit::client {

struct download::item {
  const util::dir_jail* jail = nullptr;
  std::string local;  // relative to the jail
  std::string shown;  // as the user sees it (relative to the destination)
  remote_entry entry;
  bool made = false;  // already created (a tree's root)
};

struct download::file {
  std::string remote;  // path on the server
  std::uint64_t id = 0;  // its get's request id, once sent
  const util::dir_jail* jail = nullptr;
  std::string local;  // relative to the jail ("" with stdout)
  std::string shown;
  remote_entry entry;
  shared_dir dir;
  util::unique_fd fd;
  std::string leaf, part;  // part empty: an unnamed file, or stdout
  bool private_part = false;
  struct stat part_st {};  // the part file as opened (size: what to resume from; mode)
  std::uint64_t pos = 0;
  util::content_digest digest;
  bool failed = false;
  bool preallocated = false;  // blocks up to entry.size reserved (util::preallocate)
  mode_t mode = 0644;         // what the committed file gets (prepare())
  std::unique_ptr<delta_get> delta;  // asked for "delta", or rebuilding from our old copy
  explicit file(bool sha);
  ~file();
  file(const file&) = delete;
  file& operator=(const file&) = delete;
  void release() noexcept {
    if (preallocated && fd) util::release_preallocation(fd.get());
    preallocated = false;
  }
};

struct download::commit {
  util::unique_fd file;
  shared_dir dir;
  std::string part, leaf, shown;  // part empty: an unnamed file (util::open_unnamed)
  mode_t mode = 0644;
  bool chmod = true;  // false: the part already has `mode`
  std::optional<std::int64_t> mtime;
};

// A delta download: the destination's current file (the basis) and what
// the server said about its own.
struct download::delta_get {
  util::unique_fd basis;
  std::uint64_t basis_size = 0;
  std::uint64_t size = 0;  // the server's file
  util::delta::params params;
  std::vector<util::delta::chunk> ours;  // the basis's chunks and groups
  std::vector<util::delta::group> our_groups;
  std::vector<util::delta::group> theirs;  // the server's groups so far
  std::vector<std::uint32_t> wanted;       // those whose chunks were asked for
  bool offered = false;      // get.begin said yes
  bool asked = false;        // get.ranges sent: the steps are known
  // What the part needs from where it was when asked, in order: copies
  // from the basis, and the ranges' bytes, each at its offset `at`.
  struct step {
    util::delta::op::kind what;
    std::uint64_t from, length, at;
  };
  std::vector<step> steps;
  std::size_t frontier = 0;   // the step the part's end (file::pos) is in
  std::size_t receiving = 0;  // the range step the next bytes of data are for
  std::uint64_t received = 0;  // of it so far
  // Range bytes that came before the part reached them (copies before
  // them still to do): kept in memory, up to max_waiting for the whole
  // download; past that, written to an unnamed file (`spill`, at their
  // offsets in the new file) and read back when the part reaches them.
  // The part itself is only ever written in order: whatever stops the
  // client, it is a prefix of the new file, which a later run resumes.
  static constexpr std::size_t max_waiting = 16u << 20;
  std::string waiting;
  std::size_t waiting_head = 0;
  std::uint64_t spilled = 0;  // bytes in `spill`, after those in memory
  util::unique_fd spill;
  std::optional<proto::json> end;  // get.end, come before the part was complete
  std::uint64_t matched = 0;       // bytes copied from the basis

  /// Bytes of step i that are in the part (copies: all of it, as soon as
  /// they are done).
  std::uint64_t ready(std::size_t i) const noexcept {
    if (steps[i].what == util::delta::op::copy || i < receiving) return steps[i].length;
    return i == receiving ? received : 0;
  }
};

inline download::file::file(bool sha) : digest(sha) {}
// A part left behind (failure, lost connection) keeps only its data.
inline download::file::~file() { release(); }

}  // namespace cskit::client
