// Delta downloads (docs/protocol.md, "Delta transfer for get"): a file the
// destination already has an older copy of is rebuilt from that copy and
// the byte ranges of the server's file it lacks. The server describes its
// file (groups of content-defined chunks, util/delta.hpp) and digests it;
// we cut our copy the same way, ask for the chunk lists of the groups we
// lack, then for the ranges, and write the part in order: copies from our
// copy, ranges as they arrive. The digest of the whole decides, as for any
// download; the part is committed the same way.
//
// A server is not trusted: its records are checked (sizes add up, counts
// bounded) and anything unusable means asking for the whole file; data it
// sends beyond what was asked fails the file.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

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
  util::unique_fd fd(::openat(f.dir->get(), f.leaf.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return false;
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size > std::max(f.entry.size / 4 > (~std::uint64_t{0} >> 4) ? ~std::uint64_t{0} : f.entry.size * 4,
                      std::uint64_t{64} << 20)) {
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
  std::vector<d::op> all;
  if (!f.failed && f.pos < f.delta->size) all.push_back({d::op::literal, f.pos, f.delta->size - f.pos});
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
  for (auto step : ops) {
    const std::uint64_t end = out + step.length;
    if (end > f.pos && !f.failed) {
      const std::uint64_t skip = f.pos > out ? f.pos - out : 0;
      step.from += skip;
      step.length -= skip;
      if (step.what == d::op::literal) ranges.push_back({step.from, step.length});
      dg.steps.push_back(step);
    }
    out = end;
  }
  // A failed file still answers: the server waits for the ranges (none).
  c_->send({{"type", "get.ranges"}, {"id", f.id}}, d::encode_ranges(ranges));
  run_copies(f);
}

void download::take_literal(file& f, std::string_view data) {
  delta_get& dg = *f.delta;
  while (!data.empty() && !f.failed) {
    if (!dg.asked || dg.steps.empty() || dg.steps.front().what != d::op::literal) {
      return fail(f, errc::integrity, f.shown + ": the server sent bytes that were not asked for", true);
    }
    d::op& step = dg.steps.front();
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(step.length, data.size()));
    write_data(f, data.substr(0, n));
    data.remove_prefix(n);
    step.from += n;
    step.length -= n;
    if (step.length == 0) {
      dg.steps.pop_front();
      run_copies(f);
    }
  }
}

void download::run_copies(file& f) {
  delta_get& dg = *f.delta;
  if (copy_buffer_.size() < copy_piece) copy_buffer_.resize(copy_piece);
  while (!f.failed && !dg.steps.empty() && dg.steps.front().what == d::op::copy) {
    d::op& step = dg.steps.front();
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(step.length, copy_piece));
    const long got = util::read_full(dg.basis.get(), copy_buffer_.data(), n, step.from);
    if (got != static_cast<long>(n)) {
      const int e = got < 0 ? static_cast<int>(-got) : 0;
      return fail(f, e ? local_errc(e) : errc::changed,
                  e ? local_message(e, f.shown + " (the old copy)")
                    : f.shown + ": the old copy changed while it was being read; run the command again",
                  false);
    }
    write_data(f, std::string_view(copy_buffer_.data(), n));
    c_->keep_alive();
    dg.matched += n;
    step.from += n;
    step.length -= n;
    if (step.length == 0) dg.steps.pop_front();
  }
}

}  // namespace cskit::client
