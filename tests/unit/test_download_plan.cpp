// client::download's plan, without a server: a fake answers stat and list,
// and --dry-run plans (what to send, skip, make and delete) without a
// connection, so that what get would do is tested alone, hostile listings
// included.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "client/download.hpp"
#include "util/digest.hpp"
#include "util/file_io.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using namespace cskit;
using client::planned_step;
using client::remote_entry;

namespace {

// The server: share-relative path -> entry; `extra` is appended to every
// listing as sent (for hostile names no real tree can hold).
class fake_server : public client::remote_lister {
 public:
  std::map<std::string, remote_entry> tree;
  std::vector<remote_entry> extra;
  std::uint64_t skipped = 0;
  int keep_alives = 0;

  void file(const std::string& path, std::uint64_t size, std::int64_t mtime_ns = 1'700'000'000'000'000'000) {
    remote_entry e;
    e.type = "file";
    e.size = size;
    e.mode = 0644;
    e.mtime_ns = mtime_ns;
    tree[path] = e;
  }
  void dir(const std::string& path) {
    remote_entry e;
    e.type = "dir";
    e.mode = 0755;
    tree[path] = e;
  }

  remote_entry stat(const std::string& path) override {
    if (path.empty()) {
      remote_entry root;
      root.type = "dir";
      return root;
    }
    const auto it = tree.find(path);
    if (it == tree.end()) throw client::client_error(client::failure::remote, path + ": not found", proto::errc::not_found);
    remote_entry e = it->second;
    e.name = path.substr(path.rfind('/') + 1);
    return e;
  }
  std::vector<remote_entry> list(const std::string& path, bool recursive, bool) override {
    std::vector<remote_entry> out;
    const std::string prefix = path.empty() ? "" : path + "/";
    for (const auto& [p, e] : tree) {
      if (p.size() <= prefix.size() || p.compare(0, prefix.size(), prefix) != 0) continue;
      const std::string rel = p.substr(prefix.size());
      if (!recursive && rel.find('/') != std::string::npos) continue;
      out.push_back(e);
      out.back().name = rel;
    }
    out.insert(out.end(), extra.begin(), extra.end());
    return out;
  }
  std::uint64_t last_list_skipped() const noexcept override { return skipped; }
  void keep_alive() override { ++keep_alives; }
  std::map<std::string, std::string> sums;  // path -> XXH3-128 (fs.digest)
  std::vector<std::string> digested;        // what was asked for
  std::vector<std::string> digests(const std::vector<std::string>& paths) override {
    std::vector<std::string> out;
    for (const auto& p : paths) {
      digested.push_back(p);
      out.push_back(sums.count(p) ? sums[p] : std::string());
    }
    return out;
  }
};

class GetPlan : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "dest");
    server_.dir("t");
    server_.file("t/a", 3);
    server_.dir("t/sub");
    server_.file("t/sub/b", 5);
  }

  client::transfer_result plan(const std::vector<std::string>& sources, bool archive = true, bool del = false,
                               client::path_filter filter = {}, bool checksum = false) {
    client::transfer_options o;
    o.recursive = o.preserve = o.skip_unchanged = archive;
    o.checksum = checksum;
    o.recursive = true;
    o.dry_run = true;
    o.delete_extraneous = del;
    o.filter = std::move(filter);
    return client::download(nullptr, server_, o).run(sources, dest());
  }
  std::string dest() const { return (dir_ / "dest").string(); }
  static std::map<std::string, planned_step::kind> steps(const client::transfer_result& r) {
    std::map<std::string, planned_step::kind> m;
    for (const auto& s : r.planned) m[s.path] = s.what;
    return m;
  }
  // Everything below `root`, as relative paths: what the plan must not have touched.
  static std::set<std::string> on_disk(const fs::path& root) {
    std::set<std::string> names;
    for (const auto& e : fs::recursive_directory_iterator(root)) names.insert(fs::relative(e.path(), root).string());
    return names;
  }
  void local_file(const std::string& rel, const std::string& content, std::int64_t mtime_ns, mode_t mode = 0644) {
    const fs::path p = dir_ / "dest" / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << content;
    ::chmod(p.c_str(), mode);
    util::unique_fd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_EQ(util::set_mtime_ns(fd.get(), mtime_ns), 0);
  }

  cskit::test::temp_dir tmp_{"cskit-getplan"};
  const fs::path dir_ = tmp_.path;
  fake_server server_;
};

TEST_F(GetPlan, ANewTreeIsMadeAndSentWhole) {
  const auto r = plan({"t"});
  EXPECT_TRUE(r.errors.empty());
  EXPECT_EQ(steps(r), (std::map<std::string, planned_step::kind>{{"t", planned_step::mkdir},
                                                                 {"t/sub", planned_step::mkdir},
                                                                 {"t/a", planned_step::send},
                                                                 {"t/sub/b", planned_step::send}}));
  EXPECT_TRUE(on_disk(dir_ / "dest").empty());  // a dry run makes nothing
}

TEST_F(GetPlan, ArchiveSkipsWhatIsThereWithTheSameSizeTimeAndBits) {
  local_file("t/a", "abc", 1'700'000'000'000'000'000);
  local_file("t/sub/b", "12345", 1'700'000'000'000'000'001);  // one nanosecond off: sent
  const auto r = plan({"t"});
  EXPECT_EQ(r.unchanged, 1u);
  EXPECT_EQ(steps(r), (std::map<std::string, planned_step::kind>{{"t/sub/b", planned_step::send}}));
  local_file("t/a", "abc", 1'700'000'000'000'000'000, 0600);  // other permission bits: sent
  EXPECT_EQ(steps(plan({"t"})).count("t/a"), 1u);
}

TEST_F(GetPlan, ChecksumAsksTheServerOnlyForFilesOfTheSameSize) {
  local_file("t/a", "abc", 1);       // the same size, another time: its digest decides
  local_file("t/sub/b", "1234", 1);  // another size: sent, no digest needed
  util::content_digest abc(false);
  abc.update("abc", 3);
  server_.sums["t/a"] = abc.xxh3_hex();
  auto r = plan({"t"}, false, false, {}, true);
  EXPECT_EQ(server_.digested, (std::vector<std::string>{"t/a"}));
  EXPECT_EQ(r.unchanged, 1u);
  EXPECT_EQ(steps(r), (std::map<std::string, planned_step::kind>{{"t/sub/b", planned_step::send}}));
  server_.sums["t/a"] = std::string(32, '0');  // other content
  r = plan({"t"}, false, false, {}, true);
  EXPECT_EQ(steps(r).count("t/a"), 1u);
}

TEST_F(GetPlan, DeletionsAreWhatTheListingDoesNotNameAndNotWhatIsExcluded) {
  local_file("t/a", "abc", 1'700'000'000'000'000'000);
  local_file("t/stray", "x", 1);
  local_file("t/gone/deep/file", "x", 1);
  local_file("t/cache/kept", "x", 1);
  local_file("beside", "outside the tree", 1);
  client::path_filter f;
  f.add(client::path_filter::action::exclude, "cache/");
  const auto before = on_disk(dir_ / "dest");
  const auto r = plan({"t"}, true, true, f);
  const auto s = steps(r);
  EXPECT_EQ(s.count("t/stray"), 1u);
  EXPECT_EQ(s.at("t/stray"), planned_step::remove);
  EXPECT_EQ(s.at("t/gone"), planned_step::remove);  // the directory, once
  EXPECT_EQ(s.count("t/gone/deep"), 0u);
  EXPECT_EQ(s.count("t/cache"), 0u);  // protected by --exclude
  EXPECT_EQ(s.count("t/cache/kept"), 0u);
  EXPECT_EQ(s.count("beside"), 0u);  // outside the tree
  EXPECT_EQ(on_disk(dir_ / "dest"), before);
}

TEST_F(GetPlan, NothingIsDeletedWhenTheServerSkippedNames) {
  local_file("t/stray", "x", 1);
  server_.skipped = 2;
  const auto r = plan({"t"}, true, true);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].message.find("left 2 name(s) out"), std::string::npos) << r.errors[0].message;
  for (const auto& step : r.planned) EXPECT_NE(step.what, planned_step::remove) << step.path;
  EXPECT_EQ(steps(r).count("t/a"), 1u);  // the transfer itself is still planned
}

TEST_F(GetPlan, SourcesLandingInOneDestinationKeepEachOthers) {
  server_.dir("u");
  server_.file("u/x", 1);
  local_file("u/x", "yy", 1'700'000'000'000'000'000);  // another size than the server's
  local_file("stray", "x", 1);
  // t's contents and the tree u land in dest: u is not t's to delete, the
  // stray file is nobody's.
  auto r = plan({"t/", "u"}, true, true);
  EXPECT_TRUE(r.errors.empty());
  auto s = steps(r);
  EXPECT_EQ(s.count("u"), 0u);
  EXPECT_EQ(s.count("u/x"), 1u);  // sent (other size), not deleted
  EXPECT_EQ(s.at("u/x"), planned_step::send);
  EXPECT_EQ(s.at("stray"), planned_step::remove);
  // t's contents hold "sub", which the source t/sub lands as too: whose
  // listing decides below it is not clear, so nothing is deleted.
  r = plan({"t/", "t/sub"}, true, true);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].message.find("comes from two sources"), std::string::npos) << r.errors[0].message;
  for (const auto& step : r.planned) EXPECT_NE(step.what, planned_step::remove) << step.path;
}

TEST_F(GetPlan, HostileNamesAreRefusedAndNeverPlanned) {
  for (const char* name : {"../evil", "sub/../../evil", "/etc/evil", "", ".", "a/./b", ".cskit-part.0123456789abcdef"}) {
    remote_entry e;
    e.type = "file";
    e.size = 1;
    e.name = name;
    server_.extra.push_back(e);
  }
  remote_entry link;
  link.type = "symlink";
  link.name = "up";
  link.target = "../../etc/passwd";
  server_.extra.push_back(link);
  const auto r = plan({"t"}, false);
  EXPECT_EQ(r.errors.size(), 8u);  // each hostile entry, once
  // Only the honest entries are planned, each where it belongs.
  EXPECT_EQ(steps(r), (std::map<std::string, planned_step::kind>{{"t", planned_step::mkdir},
                                                                 {"t/sub", planned_step::mkdir},
                                                                 {"t/a", planned_step::send},
                                                                 {"t/sub/b", planned_step::send}}));
}

TEST_F(GetPlan, FiltersLeaveOutAndDoNotEnter) {
  client::path_filter f;
  f.add(client::path_filter::action::exclude, "sub/");
  const auto r = plan({"t"}, false, false, f);
  EXPECT_EQ(r.excluded, 1u);
  EXPECT_EQ(steps(r), (std::map<std::string, planned_step::kind>{{"t", planned_step::mkdir},
                                                                 {"t/a", planned_step::send}}));
}

TEST_F(GetPlan, ArchiveGoesIntoTheDestinationAndSlashMeansContents) {
  auto r = plan({"t/"});
  EXPECT_EQ(steps(r), (std::map<std::string, planned_step::kind>{{"sub", planned_step::mkdir},
                                                                 {"a", planned_step::send},
                                                                 {"sub/b", planned_step::send}}));
  fs::remove(dir_ / "dest");
  r = plan({"t"});  // a destination not there yet: made, and the tree goes into it
  EXPECT_EQ(steps(r).count(dest()), 1u);
  EXPECT_EQ(steps(r).count("t/a"), 1u);
  EXPECT_FALSE(fs::exists(dir_ / "dest"));
}

}  // namespace
