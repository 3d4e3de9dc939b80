#include "client/path_filter.hpp"

#include <gtest/gtest.h>

#include <string>

namespace cskit::client {
namespace {

using action = path_filter::action;

TEST(Glob, Wildcards) {
  EXPECT_TRUE(glob_match("*.o", "main.o"));
  EXPECT_FALSE(glob_match("*.o", "main.c"));
  EXPECT_FALSE(glob_match("*.o", "src/main.o"));  // '*' stops at '/'
  EXPECT_TRUE(glob_match("**.o", "src/deep/main.o"));
  EXPECT_TRUE(glob_match("src/**", "src/a/b/c"));
  EXPECT_TRUE(glob_match("a?c", "abc"));
  EXPECT_FALSE(glob_match("a?c", "a/c"));
  EXPECT_TRUE(glob_match("[abc]x", "bx"));
  EXPECT_FALSE(glob_match("[abc]x", "dx"));
  EXPECT_TRUE(glob_match("[a-c]x", "cx"));
  EXPECT_TRUE(glob_match("[!a-c]x", "dx"));
  EXPECT_FALSE(glob_match("[^a-c]x", "bx"));
  EXPECT_TRUE(glob_match("[]]", "]"));
  EXPECT_TRUE(glob_match("\\*", "*"));
  EXPECT_FALSE(glob_match("\\*", "a"));
  EXPECT_TRUE(glob_match("*", ""));
  EXPECT_FALSE(glob_match("?", ""));
}

TEST(Glob, NoBlowUpOnLongPathsAndManyStars) {
  // Without remembering failed positions this takes exponential time.
  const std::string path(4000, 'a');
  EXPECT_FALSE(glob_match("**a**a**a**a**a**a**b", path));
  EXPECT_FALSE(glob_match("*a*a*a*a*a*a*b", path));
  EXPECT_TRUE(glob_match("**a**a**a**a**a**a", path));
}

TEST(PathFilter, DeepHostilePathsStayCheap) {
  // A server may list paths of 4096 bytes with 2048 levels: every name
  // boundary is tried, through one matcher, so this stays quick.
  std::string path;
  while (path.size() < 4000) path += "a/";
  path += "z";
  path_filter f;
  f.add(action::exclude, "**a**a**b/c");
  f.add(action::exclude, "a/**/q");
  EXPECT_FALSE(f.excluded(path, false));
  f.add(action::exclude, "a/a/z");
  EXPECT_TRUE(f.excluded(path, false));
}

TEST(PathFilter, LastNameAtAnyDepth) {
  path_filter f;
  f.add(action::exclude, "*.tmp");
  EXPECT_TRUE(f.excluded("x.tmp", false));
  EXPECT_TRUE(f.excluded("a/b/x.tmp", false));
  EXPECT_FALSE(f.excluded("a/x.tmp/y", false));  // only the last name
  EXPECT_FALSE(f.excluded("x.tmpl", false));
}

TEST(PathFilter, AnchoredAndSlashedPatterns) {
  path_filter f;
  f.add(action::exclude, "/build");
  f.add(action::exclude, "b/c");
  EXPECT_TRUE(f.excluded("build", true));
  EXPECT_FALSE(f.excluded("src/build", true));  // anchored at the top
  EXPECT_TRUE(f.excluded("b/c", false));
  EXPECT_TRUE(f.excluded("a/b/c", false));  // at a name boundary
  EXPECT_FALSE(f.excluded("ab/c", false));
}

TEST(PathFilter, DirectoriesOnly) {
  path_filter f;
  f.add(action::exclude, "cache/");
  EXPECT_TRUE(f.excluded("cache", true));
  EXPECT_TRUE(f.excluded("x/cache", true));
  EXPECT_FALSE(f.excluded("cache", false));  // a file of that name is taken
}

TEST(PathFilter, FirstMatchDecides) {
  path_filter f;
  f.add(action::include, "keep.log");
  f.add(action::exclude, "*.log");
  EXPECT_FALSE(f.excluded("keep.log", false));
  EXPECT_FALSE(f.excluded("d/keep.log", false));
  EXPECT_TRUE(f.excluded("other.log", false));
  EXPECT_FALSE(f.excluded("readme", false));  // no rule: taken

  path_filter g;  // the other order: the exclusion wins
  g.add(action::exclude, "*.log");
  g.add(action::include, "keep.log");
  EXPECT_TRUE(g.excluded("keep.log", false));
}

TEST(PathFilter, IncludeOnlySomeFiles) {
  // rsync's idiom: take directories and *.c, leave the rest.
  path_filter f;
  f.add(action::include, "*/");
  f.add(action::include, "*.c");
  f.add(action::exclude, "*");
  EXPECT_FALSE(f.excluded("src", true));
  EXPECT_FALSE(f.excluded("src/main.c", false));
  EXPECT_TRUE(f.excluded("src/main.h", false));
}

TEST(PathFilter, BadPatternsRefused) {
  path_filter f;
  EXPECT_THROW(f.add(action::exclude, ""), std::invalid_argument);
  EXPECT_THROW(f.add(action::exclude, "/"), std::invalid_argument);
  EXPECT_THROW(f.add(action::exclude, "a[bc"), std::invalid_argument);
  EXPECT_THROW(f.add(action::exclude, "ab\\"), std::invalid_argument);
  EXPECT_THROW(f.add(action::exclude, "[[:alpha:]]x"), std::invalid_argument);
  EXPECT_TRUE(f.empty());
  f.add(action::exclude, "a\\[b");
  EXPECT_TRUE(f.excluded("a[b", false));
}

}  // namespace
}  // namespace cskit::client
