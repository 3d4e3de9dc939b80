// util::walk_tree: order, depth without limit, failures and stops.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "util/tree_walk.hpp"

namespace {

using cskit::util::tree_entry;
using cskit::util::tree_visitor;
using cskit::util::unique_fd;
using cskit::util::walk_step;
using cskit::util::walk_tree;

std::size_t open_descriptors() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

// Enters every directory; failures are collected as (path, errno) and the
// walk goes on.
tree_visitor descend_and_collect_failures(std::vector<std::pair<std::string, int>>& failures) {
  tree_visitor v;
  v.enter = [](const tree_entry&) { return walk_step::descend; };
  v.failed = [&failures](const tree_entry& e, int err) {
    failures.emplace_back(e.path, err);
    return walk_step::next;
  };
  return v;
}

class TreeWalk : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/cskit-walk-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override {
    // Removes whatever the test left, with the walker itself.
    tree_visitor v;
    v.enter = [](const tree_entry& e) {
      if (S_ISDIR(e.st.st_mode)) return walk_step::descend;
      ::unlinkat(e.dir_fd, e.name.c_str(), 0);
      return walk_step::next;
    };
    v.leave = [](const tree_entry& e) {
      ::unlinkat(e.dir_fd, e.name.c_str(), AT_REMOVEDIR);
      return walk_step::next;
    };
    walk_tree(open_root(), v);
    ::rmdir(root_.c_str());
  }
  unique_fd open_root() const { return unique_fd(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)); }
  void file(const std::string& rel) {
    int fd = ::open((root_ + "/" + rel).c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0) << rel;
    ::close(fd);
  }
  void dir(const std::string& rel) { ASSERT_EQ(::mkdir((root_ + "/" + rel).c_str(), 0755), 0) << rel; }
  std::string root_;
};

TEST_F(TreeWalk, PreOrderSortedAndPostOrderLeave) {
  dir("b");
  dir("a");
  file("a/z");
  file("a/y");
  file("c");
  ASSERT_EQ(::symlink("a", (root_ + "/link").c_str()), 0);
  std::vector<std::string> seen;
  tree_visitor v;
  v.enter = [&](const tree_entry& e) {
    seen.push_back("+" + e.path + "@" + std::to_string(e.depth));
    return walk_step::descend;  // for a link or a file: nothing to enter
  };
  v.leave = [&](const tree_entry& e) {
    seen.push_back("-" + e.path);
    return walk_step::next;
  };
  EXPECT_EQ(walk_tree(open_root(), v), 0);
  EXPECT_EQ(seen, (std::vector<std::string>{"+a@0", "+a/y@1", "+a/z@1", "-a", "+b@0", "-b", "+c@0", "+link@0"}));
}

TEST_F(TreeWalk, KeepFiltersNamesAndNextDoesNotEnter) {
  dir("skip");
  file("skip/inner");
  dir("keep");
  file("keep/inner");
  std::vector<std::string> seen;
  tree_visitor v;
  v.keep = [](std::string_view n) { return n != "skip"; };
  v.enter = [&](const tree_entry& e) {
    seen.push_back(e.path);
    return e.path == "keep" ? walk_step::next : walk_step::descend;
  };
  EXPECT_EQ(walk_tree(open_root(), v), 0);
  EXPECT_EQ(seen, (std::vector<std::string>{"keep"}));
}

TEST_F(TreeWalk, DeeperThanPathMaxAndTheStack) {
  // 3,000 levels of 8-byte names: paths of 27 KB, far past PATH_MAX; built
  // through descriptors since no path can name the bottom.
  constexpr int levels = 3000;
  int fd = ::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  for (int i = 0; i < levels; ++i) {
    ASSERT_EQ(::mkdirat(fd, "level-xx", 0755), 0);
    int sub = ::openat(fd, "level-xx", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ::close(fd);
    ASSERT_GE(sub, 0);
    fd = sub;
  }
  int leaf = ::openat(fd, "bottom", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(leaf, 0);
  ::close(leaf);
  ::close(fd);
  std::size_t entries = 0, deepest = 0, most_open = 0;
  bool bottom = false;
  const std::size_t before = open_descriptors();
  tree_visitor v;
  v.enter = [&](const tree_entry& e) {
    ++entries;
    deepest = std::max(deepest, e.depth);
    if (e.depth % 100 == 0) most_open = std::max(most_open, open_descriptors());
    if (e.name == "bottom") bottom = e.path.size() == levels * 9 + 6;
    return walk_step::descend;
  };
  EXPECT_EQ(walk_tree(open_root(), v), 0);
  EXPECT_EQ(entries, static_cast<std::size_t>(levels) + 1);
  EXPECT_EQ(deepest, static_cast<std::size_t>(levels));
  EXPECT_TRUE(bottom);
  // Descriptors do not grow with the depth: at most 32 directories open.
  EXPECT_LE(most_open, before + 33);
}

TEST_F(TreeWalk, ADirectoryThatCannotBeOpenedIsReportedNotSkipped) {
  // Out of descriptors fails the same way for root as for anyone.
  std::string rel = "d1";
  dir(rel);
  for (int i = 2; i <= 4; ++i) dir(rel += "/d" + std::to_string(i));
  file(rel + "/bottom");
  int highest = 0;
  for (int fd = 0; fd < 4096; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1) highest = fd;
  }
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  std::vector<std::pair<std::string, int>> failures;
  tree_visitor v = descend_and_collect_failures(failures);
  unique_fd root = open_root();
  unique_fd again = open_root();
  rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(highest + 8);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<unique_fd> filler;
  for (int i = 0; i <= highest + 8; ++i) {  // until EMFILE: at most the limit
    unique_fd f(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!f) break;
    filler.push_back(std::move(f));
  }
  const int fill_errno = errno;
  // Two free: "d1" is opened and its names read (through a second,
  // passing descriptor); "d1/d2" can then be opened but not read.
  for (int i = 0; i < 2 && !filler.empty(); ++i) filler.pop_back();  // two free descriptors
  const int result = walk_tree(std::move(root), v);
  // And without `failed`, the walk stops with the errno.
  v.failed = nullptr;
  const int stopped = walk_tree(std::move(again), v);
  filler.clear();
  ::setrlimit(RLIMIT_NOFILE, &saved);
  ASSERT_EQ(fill_errno, EMFILE);
  EXPECT_EQ(result, 0);
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_EQ(failures[0].second, EMFILE);
  EXPECT_EQ(failures[0].first, "d1/d2");
  EXPECT_EQ(stopped, EMFILE);
}

TEST_F(TreeWalk, ADirectoryMovedAwayAboveTheOpenOnesStopsTheWalkAndSaysSo) {
  // 40 levels: the shallowest are closed while the walk is at the bottom.
  // Moving d6 (with everything below) out of d5 then means the walk cannot
  // climb back to d5 through "..": it must stop and say so, not carry on
  // as if the rest of the tree had been walked.
  std::string rel = "d0";
  dir(rel);
  for (int i = 1; i < 40; ++i) {
    rel.append("/d");
    rel.append(std::to_string(i));
    dir(rel);
  }
  file("zz-after");  // sorted after d0: never reached, the walk stops first
  std::vector<std::pair<std::string, int>> failures;
  bool moved = false, after = false;
  tree_visitor v;
  v.enter = [&](const tree_entry& e) {
    if (e.depth == 39 && !moved) {
      moved = ::renameat(AT_FDCWD, (root_ + "/d0/d1/d2/d3/d4/d5/d6").c_str(), AT_FDCWD, (root_ + "/moved").c_str()) == 0;
    }
    after |= e.path == "zz-after";
    return walk_step::descend;
  };
  v.failed = [&](const tree_entry& e, int err) {
    failures.emplace_back(e.path, err);
    return walk_step::next;  // the walk stops all the same: it cannot climb
  };
  EXPECT_EQ(walk_tree(open_root(), v), ESTALE);
  EXPECT_TRUE(moved);
  EXPECT_FALSE(after);
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_EQ(failures[0].first, rel.substr(0, rel.find("/d6")));  // d0/d1/d2/d3/d4/d5
  EXPECT_EQ(failures[0].second, ESTALE);
}

TEST_F(TreeWalk, ARootThatCannotBeReadIsReported) {
  // A descriptor without the right to read (O_PATH): the walk cannot list
  // the root, whoever runs the test, and must say so rather than report an
  // empty tree.
  file("inside");
  unique_fd path_only(::open(root_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(path_only);
  std::vector<std::pair<std::string, int>> failures;
  tree_visitor v = descend_and_collect_failures(failures);
  EXPECT_EQ(walk_tree(std::move(path_only), v), EBADF);
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_TRUE(failures[0].first.empty());
  EXPECT_EQ(failures[0].second, EBADF);
}

TEST_F(TreeWalk, StopEndsTheWalk) {
  for (const char* n : {"a", "b", "c"}) file(n);
  int calls = 0;
  tree_visitor v;
  v.enter = [&](const tree_entry&) { return ++calls == 2 ? walk_step::stop : walk_step::next; };
  EXPECT_EQ(walk_tree(open_root(), v), 0);
  EXPECT_EQ(calls, 2);
}

}  // namespace
