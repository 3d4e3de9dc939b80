#pragma once
// `cskit get`: downloads files and trees (docs/protocol.md, "Download").
//
// A server is never trusted. Every name it sends is checked by syntax, and
// everything a download creates stays beneath the tree it creates, enforced
// by the kernel at open time from that tree's own root (openat2 with
// RESOLVE_BENEATH), never its parent; no symlink below the root is ever
// followed (RESOLVE_NO_SYMLINKS): a link the server sends is written as a
// link, checked not to lead outside the tree, and never walked through.

#include <map>
#include <memory>
#include <string>
#include <set>
#include <unordered_set>
#include <vector>

#include "client/files.hpp"
#include "util/delta.hpp"
#include "util/digest.hpp"
#include "util/file_io.hpp"
#include "util/jail.hpp"
#include "util/tree_walk.hpp"

namespace cskit::client {

class download {
 public:
  /// `files` answers the planning's questions; `c` carries the transfer
  /// (nullptr: only a --dry-run, which plans and transfers nothing).
  download(connection* c, remote_lister& files, const transfer_options& o);
  download(const download&) = delete;
  download& operator=(const download&) = delete;
  ~download();

  /// Downloads `sources` into `dest` (an existing local directory, a new
  /// name for one source, or "-" for stdout). Throws client_error for
  /// connection-level failures; per-item failures are in the result.
  transfer_result run(const std::vector<std::string>& sources, const std::string& dest);

 private:
  struct item;  // a directory, link or file to create, beneath its tree's root
  struct file;  // a file being downloaded
  struct delta_get;  // a file rebuilt from its older local copy (download_delta.cpp)
  using shared_dir = std::shared_ptr<const util::unique_fd>;

  // Where things go, and what to fetch.
  void choose_destination(const std::vector<std::string>& sources, const std::string& dest);
  /// `dest` is a directory that an unfinished copy of the one source made.
  bool continues_a_copy(const std::vector<std::string>& sources, const std::string& dest) const;
  /// -a: whether the sources go into the destination as a directory (a
  /// remote directory, or several sources), as rsync puts them.
  bool into_directory(const std::vector<std::string>& sources) const;
  /// How a source is named in the mark of a tree copied from it.
  static std::string copy_source(const std::string& src);
  void plan_source(const std::string& src_in);
  void plan_tree(const std::string& src, const remote_entry& top, const std::string& root_name);
  /// `tree`: nullptr for a tree a --dry-run did not make.
  void plan_entry(const util::dir_jail* tree, const std::string& root_name, const std::string& src,
                  const remote_entry& e);
  /// --exclude/--include: whether `e` is left out, by a rule or by being
  /// inside a directory left out (recorded in `left_out`).
  bool filtered_out(const remote_entry& e, std::set<std::string, std::less<>>& left_out);
  /// -a: drops the files whose local copy has the same size, time and
  /// permission bits, and the links already there with the same target.
  void drop_unchanged();
  bool local_stat(const util::dir_jail* jail, const std::string& local, struct stat& st, std::string& leaf,
                  shared_dir& dir);
  /// Whether the destination has a regular file of f's size where f goes.
  bool same_size_here(const file& f);
  /// -c: the server's digests of the files that may be the same as ours.
  void fetch_remote_digests();
  /// -c: the XXH3-128 of the file `leaf` in `dir` ("" if it cannot be read whole).
  static std::string local_xxh3(int dir, const std::string& leaf, std::uint64_t size);
  /// -c -p: gives a file already there with the same content the server's
  /// time and permission bits.
  void retouch(int dir, const std::string& leaf, const file& f);
  /// --dry-run: what would be done, into the result.
  void list_planned();
  /// --delete: what each tree holds that its listing did not name (and
  /// --exclude does not protect), the highest of each such subtree:
  /// removed when `act`, else listed as planned.
  void prune_extraneous(bool act);
  void remove_extraneous(const util::tree_entry& e, const std::string& shown);
  /// Everything after the plan: the tree's shape, the files, the commit.
  void execute();
  /// `mode`: the root's when this makes it (the source's bits, less the umask).
  const util::dir_jail* make_tree_root(const std::string& root_name, const std::string& shown, mode_t mode);
  void refuse(const std::string& shown, const std::string& why);
  /// Drops (and reports) what the listing put below a link that was
  /// refused: a server that lists entries under a link is never obliged.
  void drop_below_refused_links();

  // The tree's shape, before any file.
  void make_directories();
  void make_links();
  void check_links();

  // The files.
  /// The directory that holds `local` in `jail` (the last one is kept:
  /// a tree's files come directory by directory); nullptr and `err` set
  /// when it cannot be opened.
  shared_dir parent_dir(const util::dir_jail& jail, const std::string& local, std::string& leaf, int& err);
  bool open_dir(file& f);
  bool prepare(file& f);
  void send_next();
  void transfer();
  void on_frame(proto::frame& f);
  void on_begin(file& f, const proto::frame& frame);
  /// get.data's bytes: written at the part's end, or (delta) where the
  /// steps say.
  void take_data(file& f, std::string_view data);
  void write_data(file& f, std::string_view data);
  void truncate_part(file& f);

  // Delta downloads (-a, -c): the server describes its file, we rebuild
  // it from our older copy and ask only for the ranges we lack.
  /// Opens the destination's current file as a basis; false: none fit.
  bool open_basis(file& f);
  /// get.begin: the server's answer to "delta"; cuts our copy into chunks.
  void start_delta(file& f, const proto::json& begin);
  void take_groups(file& f, const proto::frame& frame);
  void take_chunks(file& f, const proto::frame& frame);
  /// Our copy is of no use (or the server's records were not): everything
  /// from the part's end is asked for.
  void fetch_whole(file& f);
  /// Steps from the description: the ranges asked for, the copies to do.
  void fetch_steps(file& f, std::vector<util::delta::op> ops);
  /// A range's bytes, written where they go (digested when the part is
  /// complete up to there).
  void take_literal(file& f, std::string_view data);
  /// Range bytes kept in memory, all files together (at most
  /// delta_get::max_waiting).
  std::size_t waiting_in_memory() const;
  /// Range bytes that came too early for memory, into f's spill file; 0 or an errno.
  int spill(file& f, std::string_view bytes, std::uint64_t at);
  /// Whether f's part can grow now (a copy, or bytes that came already).
  bool can_rebuild(file& f);
  /// Grows f's part in order by up to `budget` bytes: copies from our old
  /// copy, and range bytes that waited (in memory or the spill file).
  void rebuild_some(file& f, std::uint64_t budget);
  /// Finishes f once its part is complete and get.end came (or it failed).
  void settle(file& f);
  void finish(file& f, const proto::json& h);
  /// Records the file's error (`local`: found here, not by the server).
  void fail(file& f, proto::errc code, const std::string& message, bool drop_part, bool local = false);
  void commit_finished();
  void restore_directory_attributes();

  connection* c_;
  remote_lister& files_;
  const transfer_options& o_;
  transfer_result r_;
  transfer_progress prog_;

  bool to_stdout_ = false;
  std::string base_;      // the local directory things go into
  std::string new_name_;  // one source under a new name
  std::unique_ptr<util::dir_jail> base_jail_;  // empty only in a --dry-run into a directory not made yet
  std::vector<std::unique_ptr<util::dir_jail>> trees_;  // one per tree downloaded
  // The tree made under new_name_, marked unfinished until complete
  // (util::unfinished_copy_marker), and the source it copies.
  const util::dir_jail* marked_tree_ = nullptr;
  std::string marked_source_;

  std::vector<item> dirs_;
  std::vector<item> links_;
  std::vector<item> refused_links_;
  std::vector<std::unique_ptr<file>> queue_;
  // --delete: by local directory (device, inode), every name that is the
  // sources' there: what their listings held (before the filters), and
  // what a source lands as in the destination itself.
  struct listed_tree {
    const util::dir_jail* jail = nullptr;
    std::string shown;   // the tree as the user sees it ("" : the destination itself)
    bool prune = false;  // a listing was copied into it: what it does not name goes
    std::unordered_set<std::string> names;   // from the listings copied into it
    std::unordered_set<std::string> landed;  // a source's own file or tree root, in the destination itself
  };
  std::map<std::pair<dev_t, ino_t>, listed_tree> listed_;
  listed_tree& listed_tree_of(const util::dir_jail& tree);
  void note_landing(const std::string& name);

  struct commit;
  std::vector<commit> batch_;  // verified files waiting for one flush
  std::size_t commit_batch_ = 16;
  std::string copy_buffer_;  // delta copies from our old copies
  // Delta files whose parts are being rebuilt: copies are done a slice at
  // a time between reads of the connection (never a long stretch without
  // reading it, which would stall the server's writes).
  std::vector<file*> rebuilding_;
  std::map<std::uint64_t, file*> waiting_;  // request id -> file, in request order
  std::size_t next_ = 0;
  file* current_ = nullptr;  // the file whose get.data is arriving
  // The directory of the last file prepared: a tree's files come directory
  // by directory and share one descriptor.
  const util::dir_jail* last_jail_ = nullptr;
  std::string last_parent_;
  shared_dir last_dir_;
};

}  // namespace cskit::client
