// client::plan_put: what a put sends where, decided without a server.
#include "client/upload_plan.hpp"
#include "util/file_io.hpp"
#include "temp_dir.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace cskit;
using client::put_item;

namespace {

class PutPlan : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "t/sub");
    std::ofstream(dir_ / "t/a") << "a";
    std::ofstream(dir_ / "t/sub/b") << "b";
    std::ofstream(dir_ / "t/.cskit-part.0123456789abcdef") << "an unfinished download";
    std::ofstream(dir_ / "f") << "f";
  }

  // The server as a map of path -> entry; anything else does not exist.
  client::put_plan plan(const std::vector<std::string>& sources, const std::string& dest, bool recursive = true) {
    client::transfer_options o;
    o.recursive = recursive;
    return plan_with(sources, dest, o);
  }
  // -a: recursive, times kept, unchanged files skipped.
  client::put_plan plan_archive(const std::vector<std::string>& sources, const std::string& dest,
                                client::path_filter filter = {}) {
    client::transfer_options o;
    o.recursive = o.preserve = o.skip_unchanged = true;
    o.filter = std::move(filter);
    return plan_with(sources, dest, o);
  }
  static client::transfer_options archive_options() {
    client::transfer_options o;
    o.recursive = o.preserve = o.skip_unchanged = true;
    return o;
  }
  client::put_plan plan_with(const std::vector<std::string>& sources, const std::string& dest,
                             const client::transfer_options& o) {
    result_ = {};
    return client::plan_put(sources, dest, o, result_,
                            [this](const std::string& path) -> std::optional<client::remote_entry> {
                              asked_.push_back(path);
                              auto it = server_.find(path);
                              if (it == server_.end()) return std::nullopt;
                              return it->second;
                            });
  }
  static std::map<std::string, put_item::kind> remote_items(const client::put_plan& p) {
    std::map<std::string, put_item::kind> m;
    for (const auto& it : p.items) m[it.remote] = it.what;
    return m;
  }
  static client::remote_entry dir(std::string mark = {}) {
    client::remote_entry e;
    e.type = "dir";
    e.unfinished_copy_of = std::move(mark);
    return e;
  }
  std::string src(const char* name) const { return (dir_ / name).string(); }

  cskit::test::temp_dir tmp_{"cskit-plan"};
  const fs::path dir_ = tmp_.path;
  std::map<std::string, client::remote_entry> server_;
  std::vector<std::string> asked_;
  client::transfer_result result_;
};

TEST_F(PutPlan, TreeUnderANewNameIsMarked) {
  const auto p = plan({src("t")}, "backup/new/");
  EXPECT_EQ(asked_, std::vector<std::string>{"backup/new"});
  EXPECT_FALSE(p.dest_is_dir);
  EXPECT_EQ(p.dest, "backup/new");
  EXPECT_EQ(p.new_tree, client::copy_mark(src("t")));
  EXPECT_TRUE(p.new_tree.starts_with("t ")) << p.new_tree;
  ASSERT_FALSE(p.items.empty());
  EXPECT_EQ(p.items.front().remote, "backup/new");  // the top first: it is made (and marked) first
  const auto want = std::map<std::string, put_item::kind>{
      {"backup/new", put_item::dir}, {"backup/new/a", put_item::file},
      {"backup/new/sub", put_item::dir}, {"backup/new/sub/b", put_item::file}};
  EXPECT_EQ(remote_items(p), want);  // the local part file is not sent
  EXPECT_TRUE(result_.errors.empty());
}

TEST_F(PutPlan, IntoAnExistingDirectory) {
  server_["backup"] = dir();
  const auto p = plan({src("t"), src("f")}, "backup");
  EXPECT_TRUE(p.dest_is_dir);
  EXPECT_TRUE(p.new_tree.empty());
  EXPECT_EQ(remote_items(p).count("backup/t/sub/b"), 1u);
  EXPECT_EQ(remote_items(p).at("backup/f"), put_item::file);
}

TEST_F(PutPlan, ChecksumAsksForTheDigestsOfFilesOfTheSameSizeOnly) {
  server_["backup"] = dir();
  const auto p = plan({src("t"), src("f")}, "backup");
  auto file_of = [](std::uint64_t size) {
    client::remote_entry e;
    e.type = "file";
    e.size = size;
    return e;
  };
  client::remote_tree there;
  there["backup/t/a"] = file_of(1);      // "a": the same size
  there["backup/t/sub/b"] = file_of(2);  // another size
  there["backup/f"] = dir();             // not a file
  EXPECT_EQ(client::digest_candidates(p, there), (std::vector<std::string>{"backup/t/a"}));
}

TEST_F(PutPlan, AnUnfinishedCopyOfTheSameTreeIsContinued) {
  server_["new"] = dir(client::copy_mark(src("t")));
  const auto p = plan({src("t")}, "new");
  EXPECT_FALSE(p.dest_is_dir);
  EXPECT_EQ(p.new_tree, client::copy_mark(src("t")));
  EXPECT_EQ(remote_items(p).count("new/a"), 1u);
  EXPECT_EQ(remote_items(p).count("new/t"), 0u);
}

TEST_F(PutPlan, AnotherTreesUnfinishedCopyIsNotContinued) {
  fs::create_directories(dir_ / "elsewhere/t");
  server_["new"] = dir(client::copy_mark((dir_ / "elsewhere/t").string()));  // same name, another tree
  const auto p = plan({src("t")}, "new");
  EXPECT_TRUE(p.dest_is_dir);
  EXPECT_TRUE(p.new_tree.empty());
  EXPECT_EQ(remote_items(p).count("new/t/a"), 1u);
}

TEST_F(PutPlan, LocalProblemsAreErrorsAndTheRestGoes) {
  server_["d"] = dir();
  const auto p = plan({src("t"), src("missing"), "-", src("f")}, "d", false);
  // A directory without -r, a missing file, stdin into a directory: each an error; f still goes.
  ASSERT_EQ(result_.errors.size(), 3u);
  EXPECT_NE(result_.errors[0].message.find("use -r"), std::string::npos);
  EXPECT_EQ(result_.errors[1].code, proto::errc::not_found);
  EXPECT_NE(result_.errors[2].message.find("stdin needs a remote file name"), std::string::npos);
  EXPECT_EQ(remote_items(p), (std::map<std::string, put_item::kind>{{"d/f", put_item::file}}));
}

TEST_F(PutPlan, DestinationsThatCannotBeUsedThrow) {
  EXPECT_THROW(plan({src("f"), src("t")}, "nodir"), client::client_error);  // several sources, no directory
  EXPECT_THROW(plan({src("f")}, "/etc/passwd"), client::client_error);
  EXPECT_THROW(plan({src("f")}, "a/../b"), client::client_error);
  const auto p = plan({"-"}, "from-stdin");
  ASSERT_EQ(p.items.size(), 1u);
  EXPECT_EQ(p.items[0].what, put_item::stream);
}

}  // namespace

TEST_F(PutPlan, ArchiveGoesIntoTheDestinationEveryTime) {
  // -a, as rsync: the first run into a missing destination and the next
  // into the one it made mean the same (backup/t), never backup/t/t.
  auto p = plan_archive({src("t")}, "backup");
  EXPECT_TRUE(p.dest_is_dir);
  EXPECT_TRUE(p.new_tree.empty());  // no copy-under-a-new-name mark
  ASSERT_FALSE(p.items.empty());
  EXPECT_EQ(p.items.front().remote, "backup");
  EXPECT_TRUE(p.items.front().container);  // made to hold the sources: -p gives it nothing
  EXPECT_EQ(p.tops, std::vector<std::string>{"backup/t"});
  EXPECT_EQ(remote_items(p).count("backup/t/sub/b"), 1u);

  server_["backup"] = dir();
  p = plan_archive({src("t")}, "backup");
  EXPECT_EQ(p.items.front().remote, "backup/t");  // no container: it exists
  EXPECT_EQ(remote_items(p).count("backup/t/sub/b"), 1u);

  // SRC/: its contents.
  p = plan_archive({src("t") + "/"}, "backup");
  EXPECT_EQ(p.tops, std::vector<std::string>{"backup"});
  EXPECT_EQ(remote_items(p).count("backup/sub/b"), 1u);
  EXPECT_EQ(remote_items(p).count("backup/t"), 0u);
}

TEST_F(PutPlan, UnchangedFilesAreDropped) {
  auto p = plan_archive({src("t")}, "");
  struct stat a {};
  ASSERT_EQ(::stat(src("t/a").c_str(), &a), 0);
  client::remote_tree there;
  client::remote_entry same;
  same.type = "file";
  same.size = static_cast<std::uint64_t>(a.st_size);
  same.mtime_ns = util::mtime_ns(a);
  same.mode = a.st_mode & 07777;
  there["t/a"] = same;
  client::remote_entry older = same;
  older.mtime_ns -= 1;  // one nanosecond off: sent again
  there["t/sub/b"] = older;
  {
    client::remote_entry other_bits = same;  // the same data and time, other permission bits: sent again
    other_bits.mode ^= 0100;
    auto q = p;
    client::transfer_result qr;
    client::drop_unchanged(q, {{"t/a", other_bits}}, archive_options(), qr);
    EXPECT_EQ(qr.unchanged, 0u);
    EXPECT_EQ(remote_items(q).count("t/a"), 1u);
  }
  there["t/sub"] = dir();
  client::drop_unchanged(p, there, archive_options(), result_);
  EXPECT_EQ(result_.unchanged, 1u);
  const auto items = remote_items(p);
  EXPECT_EQ(items.count("t/a"), 0u);
  EXPECT_EQ(items.count("t/sub/b"), 1u);
  EXPECT_EQ(items.count("t/sub"), 1u);  // directories stay (-p sets their times)

  // --dry-run says what is left, and does not make a directory twice.
  const auto steps = client::planned_steps(p, there);
  std::map<std::string, client::planned_step::kind> by_path;
  for (const auto& step : steps) by_path[step.path] = step.what;
  EXPECT_EQ(by_path, (std::map<std::string, client::planned_step::kind>{{"t", client::planned_step::mkdir},
                                                                        {"t/sub/b", client::planned_step::send}}));
}

TEST_F(PutPlan, DirectoriesAlreadyThereAreLeftAlone) {
  // t/ (with a, sub/b, quiet/c): the server has all of it, the same.
  fs::create_directories(dir_ / "t/quiet");
  std::ofstream(dir_ / "t/quiet/c") << "c";
  auto p = plan_archive({src("t")}, "");
  client::remote_tree there;
  for (const auto& it : p.items) {
    client::remote_entry e;
    e.type = it.what == put_item::dir ? "dir" : "file";
    e.size = static_cast<std::uint64_t>(it.st.st_size);
    e.mtime_ns = util::mtime_ns(it.st);
    e.mode = it.st.st_mode & 07777;
    there[it.remote] = e;
  }
  there["t/sub/b"].mtime_ns -= 1;  // b changed: sent, so sub's time must be set again after
  client::transfer_result r;
  auto q = p;
  client::drop_unchanged(q, there, archive_options(), r);
  const auto items = remote_items(q);
  EXPECT_EQ(items, (std::map<std::string, put_item::kind>{{"t/sub", put_item::dir}, {"t/sub/b", put_item::file}}));
  // A directory with other bits, or one something is deleted from, is kept for -p's setattr.
  there["t/quiet"].mode ^= 0070;
  q = p;
  q.deletions.push_back("t/gone");
  client::drop_unchanged(q, there, archive_options(), r);
  EXPECT_EQ(remote_items(q).count("t/quiet"), 1u);
  EXPECT_EQ(remote_items(q).count("t"), 1u);
  // Without -p, a directory that is there needs nothing at all.
  auto no_p = archive_options();
  no_p.preserve = false;
  q = p;
  client::drop_unchanged(q, there, no_p, r);
  EXPECT_EQ(remote_items(q).count("t/quiet"), 0u);
  EXPECT_EQ(remote_items(q).count("t/sub"), 0u);
}

TEST_F(PutPlan, FilterLeavesOutAndDoesNotEnter) {
  client::path_filter f;
  f.add(client::path_filter::action::exclude, "sub/");
  auto p = plan_archive({src("t")}, "", f);
  EXPECT_EQ(remote_items(p), (std::map<std::string, put_item::kind>{{"t", put_item::dir}, {"t/a", put_item::file}}));
  EXPECT_EQ(result_.excluded, 1u);  // the directory, once, not what it holds
}

TEST_F(PutPlan, DeletionsAreWhatTheSourceNoLongerHasAndNotWhatIsExcluded) {
  client::path_filter f;
  f.add(client::path_filter::action::exclude, "*.keep");
  f.add(client::path_filter::action::exclude, "cache/");
  auto p = plan_archive({src("t")}, "", f);
  client::remote_tree there;
  auto entry = [](const char* type) {
    client::remote_entry e;
    e.type = type;
    return e;
  };
  there["t"] = entry("dir");
  there["t/a"] = entry("file");           // the source has it
  there["t/gone"] = entry("file");        // not any more
  there["t/old"] = entry("dir");          // a whole directory that went
  there["t/old/x"] = entry("file");       //   (removed with it, not on its own)
  there["t/old/deeper"] = entry("dir");
  there["t/old-ish"] = entry("file");     // sorts between old and old/x
  there["t/notes.keep"] = entry("file");  // excluded: protected, as rsync does
  there["t/cache"] = entry("dir");        // an excluded directory: protected with all it holds
  there["t/cache/old.bin"] = entry("file");
  there["elsewhere"] = entry("file");     // outside the tree: never
  client::plan_deletions(p, there, f);
  EXPECT_EQ(p.deletions, (std::vector<std::string>{"t/gone", "t/old", "t/old-ish"}));
  const auto steps = client::planned_steps(p, there);
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(steps.back().what, client::planned_step::remove);
}
