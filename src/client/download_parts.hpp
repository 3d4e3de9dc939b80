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
  std::deque<util::delta::op> steps;  // what the part still needs, in order
  std::uint64_t matched = 0;          // bytes copied from the basis
};

inline download::file::file(bool sha) : digest(sha) {}
// A part left behind (failure, lost connection) keeps only its data.
inline download::file::~file() { release(); }

}  // namespace cskit::client
