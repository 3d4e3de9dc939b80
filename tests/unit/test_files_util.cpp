#include "util/jail.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "proto/frame.hpp"
#include "util/digest.hpp"
#include "util/file_io.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using namespace cskit;

TEST(RemotePath, AcceptsOrdinaryPaths) {
  for (const char* p : {"", ".", "./", "a", "a/b", "a/b/", "文件传输/报告.pdf", "with space", "..a", "a..", ".hidden",
                        "a/...", "emoji 😀"}) {
    EXPECT_EQ(util::check_relative_path(p), "") << p;
  }
}

TEST(RemotePath, RefusesHostilePaths) {
  const std::string long_name(256, 'x');
  std::string long_path;
  while (long_path.size() <= util::max_remote_path) long_path += "abcdefgh/";
  for (const std::string& p :
       {std::string(".."), std::string("../x"), std::string("a/../../x"), std::string("a/.."), std::string("/etc/passwd"),
        std::string("//x"), std::string("a//b"), std::string("a/./b"), std::string("./a"), std::string("a\nb"),
        std::string("a\x1b[2Jb"), std::string("a\x7f"), std::string("nul\0byte", 8), long_name, long_path,
        std::string("a/") + long_name}) {
    EXPECT_NE(util::check_relative_path(p), "") << p;
  }
  EXPECT_EQ(util::check_name(std::string(255, 'y')), "");
}

TEST(RemotePath, NormalizesAndSplits) {
  EXPECT_EQ(util::normalize_relative("a/b/"), "a/b");
  EXPECT_EQ(util::normalize_relative("."), "");
  auto parts = util::split_relative("a/b/c");
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[2], "c");
  EXPECT_TRUE(util::split_relative("").empty());
}

TEST(RemotePath, SymlinkTargets) {
  EXPECT_TRUE(util::symlink_target_inside("a/link", "b"));
  EXPECT_TRUE(util::symlink_target_inside("a/link", "../b"));
  EXPECT_TRUE(util::symlink_target_inside("a/b/link", "../../c"));
  EXPECT_FALSE(util::symlink_target_inside("link", "../x"));
  EXPECT_FALSE(util::symlink_target_inside("a/link", "../../x"));
  EXPECT_FALSE(util::symlink_target_inside("a/link", "/etc"));
  EXPECT_FALSE(util::symlink_target_inside("a/link", ""));
  // ".." after a name is refused: the name may be a link ("T/../..").
  EXPECT_FALSE(util::symlink_target_inside("a/link", "./b/../c"));
  EXPECT_FALSE(util::symlink_target_inside("t/U", "T/../.."));
  EXPECT_TRUE(util::symlink_target_inside("a/b/link", "./../c/d"));
}

TEST(PartFiles, NamesAreBoundedAndRecognised) {
  const std::string n = util::part_file_name(std::string(255, 'z'));
  EXPECT_LE(n.size(), util::max_name_bytes);
  EXPECT_TRUE(util::is_part_file_name(n));
  EXPECT_FALSE(util::is_part_file_name("report.pdf"));
  EXPECT_NE(util::part_file_name("a"), util::part_file_name("b"));
}

TEST(Digest, KnownVectors) {
  // XXH3-128, canonical big-endian hex (docs/protocol.md, "Files").
  EXPECT_EQ(util::xxh3_128_hex("hello\n", 6), "6bba86c7e069f56d5a10b435f1c8e49c");
  EXPECT_EQ(util::xxh3_128_hex("", 0), "99aa06d3014798d86001c324468d497f");
  util::content_digest d(true);
  d.update("hello\n", 6);
  EXPECT_EQ(d.xxh3_hex(), "6bba86c7e069f56d5a10b435f1c8e49c");
  EXPECT_EQ(d.sha256_hex(), "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
  EXPECT_EQ(d.bytes(), 6u);
}

TEST(Digest, StreamingEqualsOneShot) {
  std::string data(1 << 20, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 2654435761u >> 13);
  util::content_digest d;
  for (std::size_t off = 0; off < data.size(); off += 4093) d.update(data.data() + off, std::min<std::size_t>(4093, data.size() - off));
  EXPECT_EQ(d.xxh3_hex(), util::xxh3_128_hex(data.data(), data.size()));
  d.reset();
  EXPECT_EQ(d.xxh3_hex(), util::xxh3_128_hex("", 0));

  // SHA-256 (hashlib.sha256 of the same bytes). Reading the digest midway
  // must not disturb the running one.
  util::content_digest s(true);
  for (std::size_t off = 0; off < data.size(); off += 4093) {
    s.update(data.data() + off, std::min<std::size_t>(4093, data.size() - off));
    if (off == 4093 * 9) {
      EXPECT_EQ(s.sha256_hex(), "8f9ff560c9c4aadcbfb33236fcb16005da8cc9219d0063116a1728394f97c007");
      EXPECT_EQ(s.sha256_hex(), "8f9ff560c9c4aadcbfb33236fcb16005da8cc9219d0063116a1728394f97c007");
    }
  }
  EXPECT_EQ(s.sha256_hex(), "f5600770a8695a85fc7bb6d18a40a5b80a2b8a39c86f346a1b58f8ccc1e8fde6");
  s.reset();
  EXPECT_EQ(s.sha256_hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}


// content_digest hashes with the widest vector unit the CPU has; every
// kernel must give the baseline's digest for every length (XXH3 takes
// different paths at 0-16, 17-128, 129-240 bytes, per stripe, per block)
// and however the input is cut into updates.
TEST(Digest, EveryVectorVariantAgreesWithTheBaseline) {
  std::string data((1 << 20) + 777, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 2654435761u >> 11);
  const auto variants = util::xxh3_usable_variants();
  ASSERT_FALSE(variants.empty());
  EXPECT_EQ(variants.front(), "baseline");
  EXPECT_NE(std::find(variants.begin(), variants.end(), util::xxh3_variant()), variants.end());
  const std::size_t lengths[] = {0, 1, 3, 16, 17, 64, 128, 129, 200, 240, 241, 1023, 1024, 1025, 4095, 65536, 100003, data.size()};
  const std::size_t pieces[] = {0, 1, 63, 64, 1000, 4096, 65537};
  for (auto n : lengths) {
    const std::string want = util::xxh3_128_hex(data.data(), n);
    for (auto v : variants) {
      for (auto piece : pieces) {
        if (piece == 1 && n > 4096) continue;  // byte by byte only for short inputs
        EXPECT_EQ(util::xxh3_128_hex_with(v, data.data(), n, piece), want) << v << " n=" << n << " piece=" << piece;
      }
    }
  }
  util::content_digest d;
  d.update(data.data(), data.size());
  EXPECT_EQ(d.xxh3_hex(), util::xxh3_128_hex(data.data(), data.size()));
  EXPECT_THROW(util::xxh3_128_hex_with("no-such-unit", data.data(), 1), std::invalid_argument);
}
TEST(FrameHeaderOnly, MatchesEncodeFrame) {
  std::string a, b;
  const proto::json h = {{"type", "get.data"}, {"id", 7}};
  ASSERT_EQ(proto::encode_frame(a, h, "abcdef"), proto::errc::ok);
  ASSERT_EQ(proto::encode_frame_header(b, h, 6), proto::errc::ok);
  b += "abcdef";
  EXPECT_EQ(a, b);
  std::string c;
  EXPECT_EQ(proto::encode_frame_header(c, h, proto::max_body_size + 1), proto::errc::body_too_large);
  EXPECT_TRUE(c.empty());
}

TEST(StreamedBody, DeliversPiecesThenTheFrame) {
  std::string wire;
  ASSERT_EQ(proto::encode_frame(wire, {{"type", "put.data"}, {"id", 1}}, std::string(100000, 'q')), proto::errc::ok);
  ASSERT_EQ(proto::encode_frame(wire, {{"type", "put.end"}, {"id", 1}}), proto::errc::ok);
  for (std::size_t step : {std::size_t{1}, std::size_t{7}, std::size_t{4096}, wire.size()}) {
    proto::frame_decoder d;
    d.report_headers(true);
    std::string body;
    std::vector<std::string> frames;
    int headers = 0;
    for (std::size_t off = 0; off < wire.size(); off += step) {
      std::string_view in(wire.data() + off, std::min(step, wire.size() - off));
      proto::frame f;
      while (!in.empty() || d.frame_pending()) {
        auto st = d.decode(in, f);
        if (st == proto::frame_decoder::status::need_more) break;
        ASSERT_NE(st, proto::frame_decoder::status::error);
        if (st == proto::frame_decoder::status::header) {
          ++headers;
          EXPECT_EQ(d.current_header().value("type", ""), "put.data");
          d.stream_body();
        } else if (st == proto::frame_decoder::status::body_part) {
          body += d.body_part();
        } else {
          EXPECT_TRUE(f.body.empty());
          frames.emplace_back(f.type());
        }
      }
    }
    EXPECT_EQ(headers, 1) << step;
    EXPECT_EQ(body, std::string(100000, 'q')) << step;
    ASSERT_EQ(frames.size(), 2u) << step;
    EXPECT_EQ(frames[0], "put.data");
    EXPECT_EQ(frames[1], "put.end");
  }
}

TEST(StreamedBody, NotStreamingBuffersAsBefore) {
  std::string wire;
  ASSERT_EQ(proto::encode_frame(wire, {{"type", "x"}}, "body!"), proto::errc::ok);
  proto::frame_decoder d;
  d.report_headers(true);
  std::string_view in(wire);
  proto::frame f;
  EXPECT_EQ(d.decode(in, f), proto::frame_decoder::status::header);
  EXPECT_EQ(d.decode(in, f), proto::frame_decoder::status::frame);
  EXPECT_EQ(f.body, "body!");
}

class JailTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "share/sub");
    fs::create_directories(dir_ / "outside");
    std::ofstream(dir_ / "outside/secret") << "secret";
    std::ofstream(dir_ / "share/sub/ok") << "ok";
    fs::create_symlink(dir_ / "outside", dir_ / "share/abs_link");
    fs::create_symlink("../../outside", dir_ / "share/sub/rel_link");
    fs::create_symlink("ok", dir_ / "share/sub/inside_link");
  }
  test::temp_dir tmp_{"cskit-jail"};
  const fs::path dir_ = tmp_.path;
};

TEST_F(JailTest, OpensInsideAndRefusesEscapes) {
  util::dir_jail jail(dir_ / "share");
  util::unique_fd ok(jail.open("sub/ok", O_RDONLY));
  EXPECT_TRUE(ok);
  util::unique_fd via_link(jail.open("sub/inside_link", O_RDONLY));
  EXPECT_TRUE(via_link);
  EXPECT_EQ(jail.open("abs_link/secret", O_RDONLY), -EXDEV);
  EXPECT_EQ(jail.open("sub/rel_link/secret", O_RDONLY), -EXDEV);
  EXPECT_EQ(jail.open("../outside/secret", O_RDONLY), -EXDEV);  // even without the string check
  EXPECT_EQ(jail.open("/etc/passwd", O_RDONLY), -EXDEV);
  std::string leaf;
  util::unique_fd parent(jail.open_parent("abs_link/new", leaf));
  EXPECT_FALSE(parent);
  EXPECT_EQ(leaf, "new");
}

TEST(HashFileRange, MatchesAndSurvivesAShrunkFile) {
  char tmpl[] = "/tmp/cskit-hash-XXXXXX";
  int fd = ::mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  std::string data(3 << 20, 'h');
  for (std::size_t i = 0; i < data.size(); i += 97) data[i] = static_cast<char>(i);
  ASSERT_EQ(util::write_all(fd, data.data(), data.size()), 0);
  util::content_digest d;
  ASSERT_EQ(util::hash_file_range(fd, 12345, 2 << 20, d), 0);
  EXPECT_EQ(d.xxh3_hex(), util::xxh3_128_hex(data.data() + 12345, 2 << 20));
  // Pages past the end of the file: a SIGBUS on the mapping, reported as EIO.
  util::content_digest d2;
  EXPECT_EQ(util::hash_file_range(fd, 0, 64u << 20, d2), EIO);
  ::close(fd);
  ::unlink(tmpl);
}

namespace {
std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
std::vector<std::string> names_in(const fs::path& d) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(d)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

TEST(UnnamedFiles, LinkNewReplaceRefuse) {
  const test::temp_dir tmp("cskit-unnamed");
  const fs::path& d = tmp.path;
  util::unique_fd dir(::open(d.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(dir);
  const mode_t umask_now = ::umask(022);
  ::umask(umask_now);
  auto unnamed = [&](const std::string& content) {
    struct stat st {};
    int fd = util::open_unnamed(dir.get(), 0666, st);
    if (fd == -EOPNOTSUPP) return fd;
    EXPECT_GE(fd, 0) << std::strerror(-fd);
    EXPECT_TRUE(S_ISREG(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0666 & ~umask_now) << "created with the mode asked for, less the umask";
    EXPECT_EQ(util::write_all(fd, content.data(), content.size()), 0);
    return fd;
  };
  util::unique_fd a(unnamed("first"));
  // Linux has had O_TMPFILE on ext4, xfs, btrfs and tmpfs since 3.11-3.18;
  // where it is missing, transfers fall back to named parts.
  ASSERT_NE(a.get(), -EOPNOTSUPP) << "no O_TMPFILE in /tmp (or no /proc)";
  EXPECT_TRUE(names_in(d).empty()) << "an unnamed file has no directory entry";

  // A new name.
  ASSERT_EQ(util::link_unnamed(a.get(), dir.get(), "f", false), 0);
  EXPECT_EQ(slurp(d / "f"), "first");
  struct stat linked {};
  ASSERT_EQ(::stat((d / "f").c_str(), &linked), 0);
  EXPECT_EQ(linked.st_mode & 07777, 0666 & ~umask_now);
  // An existing name is replaced whole, and no temporary name is left.
  util::unique_fd b(unnamed("second"));
  ASSERT_EQ(util::link_unnamed(b.get(), dir.get(), "f", false), 0);
  EXPECT_EQ(slurp(d / "f"), "second");
  EXPECT_EQ(names_in(d), std::vector<std::string>{"f"});
  // no_clobber refuses and keeps the old content.
  util::unique_fd c(unnamed("third"));
  EXPECT_EQ(util::link_unnamed(c.get(), dir.get(), "f", true), EEXIST);
  EXPECT_EQ(slurp(d / "f"), "second");
  // A directory in the way is refused either way, and keeps its content.
  fs::create_directory(d / "sub");
  std::ofstream(d / "sub/inside") << "keep";
  EXPECT_EQ(util::link_unnamed(c.get(), dir.get(), "sub", false), EISDIR);
  EXPECT_EQ(util::link_unnamed(c.get(), dir.get(), "sub", true), EISDIR);
  EXPECT_EQ(slurp(d / "sub/inside"), "keep");
  // A symlink in the way is replaced itself, not written through.
  fs::create_symlink("sub/inside", d / "link");
  ASSERT_EQ(util::link_unnamed(c.get(), dir.get(), "link", false), 0);
  EXPECT_FALSE(fs::is_symlink(d / "link"));
  EXPECT_EQ(slurp(d / "link"), "third");
  EXPECT_EQ(slurp(d / "sub/inside"), "keep");
  EXPECT_EQ(names_in(d), (std::vector<std::string>{"f", "link", "sub"}));
  // Closed before it was linked: nothing is left behind.
  { util::unique_fd gone(unnamed("never linked")); }
  EXPECT_EQ(names_in(d), (std::vector<std::string>{"f", "link", "sub"}));
}

TEST(UnnamedFiles, StalePartOfACommittedNameIsDropped) {
  const test::temp_dir tmp("cskit-stale");
  const fs::path& d = tmp.path;
  util::unique_fd dir(::open(d.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(dir);
  const std::string part = util::part_file_name("f");
  std::ofstream(d / part) << "left by an interrupted transfer";
  // Held by a transfer: kept.
  {
    util::unique_fd held(::open((d / part).c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_EQ(::flock(held.get(), LOCK_EX | LOCK_NB), 0);
    util::drop_stale_part(dir.get(), "f");
    EXPECT_TRUE(fs::exists(d / part));
  }
  // Not held: removed. Another name's part, and a missing one, are left alone.
  const std::string other = util::part_file_name("g");
  std::ofstream(d / other) << "g's";
  util::drop_stale_part(dir.get(), "f");
  EXPECT_FALSE(fs::exists(d / part));
  EXPECT_TRUE(fs::exists(d / other));
  util::drop_stale_part(dir.get(), "f");
  // A directory under the part's name is not removed.
  fs::create_directory(d / part);
  util::drop_stale_part(dir.get(), "f");
  EXPECT_TRUE(fs::is_directory(d / part));
}

TEST(ReceivedFileMode, NewFilesTakeTheSourceBitsReplacedOnesKeepTheirs) {
  const test::temp_dir tmp("cskit-mode");
  const fs::path& dir = tmp.path;
  const int dfd = ::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(dfd, 0);
  const mode_t mask = ::umask(0);  // read it (util reads it once): the test follows whatever it is
  ::umask(mask);
  // New: the source's rwx bits less the umask; 0 (no mode sent) is 0666 less the umask.
  EXPECT_EQ(util::received_file_mode(dfd, "new", 0755), 0755 & ~mask);
  EXPECT_EQ(util::received_file_mode(dfd, "new", 0600), 0600 & ~mask);
  EXPECT_EQ(util::received_file_mode(dfd, "new", 04755), 0755 & ~mask);  // never set-id bits
  EXPECT_EQ(util::received_file_mode(dfd, "new", 0), 0666 & ~mask);
  EXPECT_EQ(util::received_file_mode(dfd, "new", 0), util::default_file_mode());
  // Replaced: the existing file's bits, set-id bits left out.
  const int f = ::openat(dfd, "old", O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  ASSERT_GE(f, 0);
  ASSERT_EQ(::fchmod(f, 02640), 0);
  ::close(f);
  EXPECT_EQ(util::received_file_mode(dfd, "old", 0777), 0640u);
  // A directory or a symlink in the way is no file to keep the bits of.
  ASSERT_EQ(::mkdirat(dfd, "adir", 0700), 0);
  ASSERT_EQ(::symlinkat("old", dfd, "alink"), 0);
  EXPECT_EQ(util::received_file_mode(dfd, "adir", 0644), 0644 & ~mask);
  EXPECT_EQ(util::received_file_mode(dfd, "alink", 0644), 0644 & ~mask);
  ::close(dfd);
}
