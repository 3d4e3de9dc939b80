// Delta downloads (docs/protocol.md, "Delta transfer for downloads"): a
// file the destination already has an older copy of is rebuilt from that
// copy and the byte ranges of the server's file it lacks. The server
// describes its file (groups of content-defined chunks, util/delta.hpp)
// and digests it; we cut our copy the same way, ask for the chunk lists of
// the groups we lack, then for the ranges, and grow the part in order:
// copies from our copy, a slice at a time between reads of the connection
// (transfer()), and the ranges' bytes, written at once where the part
// ends, else kept in memory until it gets there (16 MiB for the whole
// download; past that in an unnamed spill file, read back when the part
// gets there). The part is only ever written in order, so a part left
// behind (whatever stopped the client) is a prefix of the new file, which
// the next run resumes. The digest of the whole decides, as for any
// download; the part is committed the same way.
//
// A server is not trusted: its records are checked (sizes add up, counts
// bounded) and anything unusable means asking for the whole file; data it
// sends beyond what was asked fails the file.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "client/download_parts.hpp"
#include "client/files_detail.hpp"

namespace cskit::client {

using detail::local_errc;
using detail::local_message;
using proto::errc;
using proto::json;
namespace d = util::delta;

namespace {
constexpr std::size_t copy_piece = 1u << 20;  // a copy's read and write
}  // namespace

bool download::open_basis(file& f) {
  // Only for -a/-c (not --whole-file), into a named part, and a file large
  // enough not to come in one frame; the destination's file as it is now,
  // if it is a regular file (never through a link) not much larger than
  // the new one.
  if (!o_.delta || to_stdout_ || f.part.empty() || f.entry.size <= detail::inline_max || !f.dir) return false;
  // A part that has most of the file already: the rest comes whole (both
  // sides would read all of it to describe it).
  if (static_cast<std::uint64_t>(f.part_st.st_size) >= f.entry.size / 2) return false;
  util::unique_fd fd(::openat(f.dir->get(), f.leaf.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return false;
  const auto size = static_cast<std::uint64_t>(st.st_size);
  const std::uint64_t four_times = f.entry.size > (~std::uint64_t{0} >> 2) ? ~std::uint64_t{0} : f.entry.size * 4;
  if (size > std::max(four_times, std::uint64_t{64} << 20)) {
    return false;  // reading it would cost more than it could save
  }
  f.delta = std::make_unique<delta_get>();
  f.delta->basis = std::move(fd);
  f.delta->basis_size = size;
  return true;
}

void download::start_delta(file& f, const json& begin) {
  delta_get& dg = *f.delta;
  const auto offer = begin.find("delta");
  if (offer == begin.end() || !offer->is_object()) {
    f.delta.reset();  // not offered: an ordinary download
    return;
  }
  dg.offered = true;
  dg.size = f.entry.size;  // (get.begin's)
  dg.params = d::params_for(dg.size);
  const auto avg = offer->find("chunk_avg");
  // A server that cuts differently, or would describe more than a
  // server may, gets asked for the whole file.
  if (f.failed || f.pos >= dg.size || avg == offer->end() || !avg->is_number_unsigned() ||
      avg->get<std::uint64_t>() != dg.params.avg || dg.size / dg.params.min > detail::max_delta_chunks) {
    return fetch_whole(f);
  }
  d::grouper grouper;
  d::reading r;
  r.progress = [&](bool done) {
    c_->keep_alive();  // (a ping every 10 s while our copy is read: the server is waiting)
    if (done) {
      grouper.finish(dg.ours, dg.our_groups);
    } else {
      grouper.add(dg.ours, dg.our_groups);
    }
    return true;
  };
  if (!d::chunk_file(dg.basis.get(), dg.basis_size, dg.params, dg.ours, r)) {
    dg.ours.clear();  // our copy changed as we read it: of no use
    dg.our_groups.clear();
    return fetch_whole(f);
  }
}

void download::take_groups(file& f, const proto::frame& frame) {
  if (!f.delta || !f.delta->offered || f.delta->asked) return;  // (after fetch_whole: of no use any more)
  delta_get& dg = *f.delta;
  const bool last = frame.header.value("done", false);
  if (!d::decode_more_groups(frame.body, dg.size, last, dg.theirs) ||
      dg.theirs.size() > dg.size / dg.params.min + 1) {
    return fetch_whole(f);
  }
  if (!last) return;
  dg.wanted = d::unmatched_groups(dg.our_groups, dg.theirs);
  if (dg.wanted.empty()) {
    return fetch_steps(f, d::plan_fetch(dg.theirs, {}, {}, dg.ours, dg.our_groups));
  }
  c_->send({{"type", "get.chunks"}, {"id", f.id}}, d::encode_indices(dg.wanted));
}

void download::take_chunks(file& f, const proto::frame& frame) {
  if (!f.delta || !f.delta->offered || f.delta->asked || f.delta->wanted.empty()) return;
  delta_get& dg = *f.delta;
  auto chunks = d::decode_chunks(frame.body, dg.theirs, dg.wanted);
  if (!chunks) return fetch_whole(f);
  fetch_steps(f, d::plan_fetch(dg.theirs, dg.wanted, *chunks, dg.ours, dg.our_groups));
}

void download::fetch_whole(file& f) {
  std::vector<d::op> all;  // (fetch_steps skips what the part has)
  if (f.delta->size > 0) all.push_back({d::op::literal, 0, f.delta->size});
  fetch_steps(f, std::move(all));
}

void download::fetch_steps(file& f, std::vector<d::op> ops) {
  delta_get& dg = *f.delta;
  dg.asked = true;
  dg.ours = {};
  dg.our_groups = {};
  dg.theirs = {};
  // The part already holds the first f.pos bytes (a resume): the steps
  // start there.
  std::uint64_t out = 0;
  std::vector<d::range> ranges;
  for (auto op : ops) {
    const std::uint64_t end = out + op.length;
    if (end > f.pos && !f.failed) {
      const std::uint64_t skip = f.pos > out ? f.pos - out : 0;
      if (op.what == d::op::literal) ranges.push_back({op.from + skip, op.length - skip});
      dg.steps.push_back({op.what, op.from + skip, op.length - skip, out + skip});
    }
    out = end;
  }
  dg.receiving = 0;
  while (dg.receiving < dg.steps.size() && dg.steps[dg.receiving].what != d::op::literal) ++dg.receiving;
  // A failed file still answers: the server waits for the ranges (none).
  c_->send({{"type", "get.ranges"}, {"id", f.id}}, d::encode_ranges(ranges));
  if (!f.failed) rebuilding_.push_back(&f);
}

void download::take_literal(file& f, std::string_view data) {
  delta_get& dg = *f.delta;
  while (!data.empty() && !f.failed) {
    if (!dg.asked || dg.receiving >= dg.steps.size()) {
      return fail(f, errc::integrity, f.shown + ": the server sent bytes that were not asked for", true);
    }
    const auto& step = dg.steps[dg.receiving];
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(step.length - dg.received, data.size()));
    const std::uint64_t at = step.at + dg.received;
    const std::string_view bytes = data.substr(0, n);
    if (at == f.pos) {
      write_data(f, bytes);  // where the part ends: written and digested at once
    } else if (dg.spilled == 0 && waiting_in_memory() + n <= delta_get::max_waiting) {
      dg.waiting.append(bytes);  // until the copies before it are done
    } else if (int e = spill(f, bytes, at)) {
      return fail(f, local_errc(e), local_message(e, f.shown + " (a temporary file)"), false, true);
    }
    data.remove_prefix(n);
    dg.received += n;
    if (dg.received == step.length) {
      dg.received = 0;
      do {
        ++dg.receiving;
      } while (dg.receiving < dg.steps.size() && dg.steps[dg.receiving].what != d::op::literal);
    }
  }
}

std::size_t download::waiting_in_memory() const {
  std::size_t n = 0;
  for (const file* f : rebuilding_) {
    if (f->delta) n += f->delta->waiting.size() - f->delta->waiting_head;
  }
  return n;
}

int download::spill(file& f, std::string_view bytes, std::uint64_t at) {
  delta_get& dg = *f.delta;
  if (!dg.spill) {
    // Unnamed (gone when closed), beside the part, else in the temporary
    // directory; sparse: each byte at its offset in the new file.
    struct stat st {};
    int fd = util::open_unnamed(f.dir->get(), 0600, st);
    if (fd < 0) {
      const char* tmp = std::getenv("TMPDIR");
      util::unique_fd dir(::open(tmp && *tmp ? tmp : "/tmp", O_PATH | O_DIRECTORY | O_CLOEXEC));
      fd = dir ? util::open_unnamed(dir.get(), 0600, st) : -errno;
    }
    if (fd < 0) return -fd;
    dg.spill.reset(fd);
  }
  if (int e = util::pwrite_all(dg.spill.get(), bytes.data(), bytes.size(), at)) return e;
  dg.spilled += bytes.size();
  prog_.bytes_done += bytes.size();
  return 0;
}

bool download::can_rebuild(file& f) {
  if (f.failed || !f.delta || !f.delta->asked) return false;
  delta_get& dg = *f.delta;
  while (dg.frontier < dg.steps.size() && f.pos >= dg.steps[dg.frontier].at + dg.steps[dg.frontier].length) {
    ++dg.frontier;
  }
  return dg.frontier < dg.steps.size() && dg.ready(dg.frontier) > f.pos - dg.steps[dg.frontier].at;
}

void download::rebuild_some(file& f, std::uint64_t budget) {
  if (copy_buffer_.size() < copy_piece) copy_buffer_.resize(copy_piece);
  while (budget > 0 && can_rebuild(f)) {
    delta_get& dg = *f.delta;
    const auto& step = dg.steps[dg.frontier];
    const std::uint64_t done = f.pos - step.at;
    auto n = static_cast<std::size_t>(std::min({dg.ready(dg.frontier) - done, std::uint64_t{copy_piece}, budget}));
    if (step.what == d::op::literal && dg.waiting_head < dg.waiting.size()) {
      // Range bytes that waited in memory: written now.
      n = std::min(n, dg.waiting.size() - dg.waiting_head);
      write_data(f, std::string_view(dg.waiting).substr(dg.waiting_head, n));
      dg.waiting_head += n;
      if (dg.waiting_head == dg.waiting.size() || dg.waiting_head > (1u << 20)) {
        dg.waiting.erase(0, dg.waiting_head);  // (a memmove of what is left, at most every MiB)
        dg.waiting_head = 0;
      }
    } else {
      // A copy reads our old copy; range bytes that waited in the spill
      // file are read back from it.
      const bool copy = step.what == d::op::copy;
      const long got = util::read_full(copy ? dg.basis.get() : dg.spill.get(), copy_buffer_.data(), n,
                                       copy ? step.from + done : f.pos);
      if (got != static_cast<long>(n)) {
        const int e = got < 0 ? static_cast<int>(-got) : EIO;
        if (copy && got >= 0) {
          return fail(f, errc::changed, f.shown + ": the old copy changed while it was being read; run the command again",
                      false);
        }
        return fail(f, local_errc(e), local_message(e, f.shown + (copy ? " (the old copy)" : " (a temporary file)")), false,
                    true);
      }
      write_data(f, std::string_view(copy_buffer_.data(), n));
      if (copy) {
        dg.matched += n;
      } else {
        prog_.bytes_done -= n;  // (counted when it came)
        dg.spilled -= n;
      }
    }
    budget -= std::min<std::uint64_t>(budget, n);
    c_->keep_alive();
  }
}

void download::settle(file& f) {
  if (!f.delta) {  // (over already)
    std::erase(rebuilding_, &f);
    return;
  }
  delta_get& dg = *f.delta;
  if (!f.failed && !dg.end) return;  // more to come
  if (!f.failed && f.pos != dg.size) {
    if (can_rebuild(f)) return;
    fail(f, errc::integrity, f.shown + ": the server ended the download before it sent the ranges asked for", true);
  }
  std::erase(rebuilding_, &f);
  if (!dg.end) return;  // (failed: its get.end or error is still to come)
  const json end = std::move(*dg.end);
  finish(f, end);
  if (f.failed) f.delta.reset(), f.fd.reset(), f.dir.reset();
}

}  // namespace cskit::client
