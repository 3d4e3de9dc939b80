// Chat history: CHATHISTORY's selections, the SQLite store (persistence,
// retention, messages not yet written, damaged and unwritable files) and
// IRC's line format.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "proto/irc.hpp"
#include "service/chat_history.hpp"
#include "service/chat_sqlite.hpp"
#include "temp_dir.hpp"
#include "util/clock.hpp"

using namespace cskit;
using service::chat_event;
using service::chat_history_query;
using event_ptr = std::shared_ptr<const chat_event>;

namespace {

event_ptr msg(std::uint64_t id, std::int64_t ts, std::string text, std::string room = "#r") {
  auto e = std::make_shared<chat_event>();
  e->id = id;
  e->ts_ms = ts;
  e->text = std::move(text);
  e->room = std::move(room);
  e->nick = "alice";
  e->account = "alice";
  return e;
}

std::vector<std::uint64_t> ids(const std::vector<event_ptr>& v) {
  std::vector<std::uint64_t> out;
  for (const auto& e : v) out.push_back(e->id);
  return out;
}

chat_history_query q(chat_history_query::mode m, std::size_t limit, std::uint64_t a = 0, std::uint64_t b = 0) {
  chat_history_query x;
  x.what = m;
  x.limit = limit;
  x.a.any = a == 0;
  x.a.by_id = a != 0;
  x.a.id = a;
  x.b.by_id = true;
  x.b.id = b;
  return x;
}

using m = chat_history_query::mode;

// Ten messages, ids 1..10, one second apart.
std::vector<event_ptr> ten() {
  std::vector<event_ptr> v;
  for (std::uint64_t i = 1; i <= 10; ++i) {
    std::string text = "m";  // (not "m" + ...: GCC 12 warns wrongly about it at -O3)
    text += std::to_string(i);
    v.push_back(msg(i, 1000 * static_cast<std::int64_t>(i), text));
  }
  return v;
}

}  // namespace

TEST(chat_history, selections_follow_chathistory) {
  const auto all = ten();
  EXPECT_EQ(ids(service::select_history(all, q(m::latest, 3))), (std::vector<std::uint64_t>{8, 9, 10}));
  EXPECT_EQ(ids(service::select_history(all, q(m::latest, 5, 8))), (std::vector<std::uint64_t>{9, 10}));
  EXPECT_EQ(ids(service::select_history(all, q(m::before, 2, 5))), (std::vector<std::uint64_t>{3, 4}));
  EXPECT_EQ(ids(service::select_history(all, q(m::after, 2, 5))), (std::vector<std::uint64_t>{6, 7}));
  EXPECT_EQ(ids(service::select_history(all, q(m::around, 4, 5))), (std::vector<std::uint64_t>{3, 4, 5, 6}));
  EXPECT_EQ(ids(service::select_history(all, q(m::between, 10, 3, 7))), (std::vector<std::uint64_t>{4, 5, 6}));
  // Backwards: the latest ones before the first reference, still oldest first.
  EXPECT_EQ(ids(service::select_history(all, q(m::between, 2, 8, 2))), (std::vector<std::uint64_t>{6, 7}));
  EXPECT_TRUE(service::select_history(all, q(m::before, 5, 1)).empty());
  EXPECT_TRUE(service::select_history({}, q(m::latest, 5)).empty());
  // By time: after t=7.5 s.
  auto by_time = q(m::after, 10);
  by_time.a = {false, false, 0, 7500};
  EXPECT_EQ(ids(service::select_history(all, by_time)), (std::vector<std::uint64_t>{8, 9, 10}));
}

TEST(chat_history, memory_store_keeps_its_retention) {
  auto h = service::make_memory_history({4, 0});
  for (const auto& e : ten()) h->add("#r", e);
  EXPECT_EQ(ids(h->query("#r", q(m::latest, 100))), (std::vector<std::uint64_t>{7, 8, 9, 10}));
  EXPECT_TRUE(h->query("#other", q(m::latest, 100)).empty());
}

TEST(chat_history, memory_store_keeps_within_its_byte_budget) {
  // About 100 messages of 1 KB fit: the oldest of the whole server go first.
  auto h = service::make_memory_history({1000, 0, 100 * 1400});
  for (std::uint64_t i = 1; i <= 300; ++i) {
    h->add(i % 2 ? "#odd" : "#even", msg(i, static_cast<std::int64_t>(i), std::string(1000, 'x'), i % 2 ? "#odd" : "#even"));
  }
  const auto odd = ids(h->query("#odd", q(m::latest, 1000)));
  const auto even = ids(h->query("#even", q(m::latest, 1000)));
  EXPECT_GT(odd.size() + even.size(), 50u);
  EXPECT_LE(odd.size() + even.size(), 140u);  // at least 1 KB each: never more than the budget holds
  ASSERT_FALSE(odd.empty());
  ASSERT_FALSE(even.empty());
  EXPECT_EQ(odd.back(), 299u);
  EXPECT_EQ(even.back(), 300u);
  EXPECT_GT(std::min(odd.front(), even.front()), 150u);  // the oldest went first
}

TEST(chat_history, sqlite_store_survives_reopening_and_answers_every_mode) {
  test::temp_dir dir;
  const auto path = dir.path / "h.sqlite3";
  {
    auto h = service::open_sqlite_history(path, {1000, 0});
    for (const auto& e : ten()) h->add("#r", e);
    auto p = msg(11, 11000, "psst", "");
    auto pe = std::make_shared<chat_event>(*p);
    pe->is_private = true;
    pe->target = "bob";
    pe->action = true;
    h->add(service::chat_history::pair_key("Bob", "alice"), pe);
    // Not necessarily written yet: queries see it anyway.
    EXPECT_EQ(ids(h->query("#r", q(m::latest, 3))), (std::vector<std::uint64_t>{8, 9, 10}));
  }
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "private messages are in it";
  auto h = service::open_sqlite_history(path, {1000, 0});
  EXPECT_EQ(h->last_id(), 11u);
  EXPECT_EQ(ids(h->query("#r", q(m::latest, 3))), (std::vector<std::uint64_t>{8, 9, 10}));
  EXPECT_EQ(ids(h->query("#r", q(m::before, 2, 5))), (std::vector<std::uint64_t>{3, 4}));
  EXPECT_EQ(ids(h->query("#r", q(m::after, 2, 5))), (std::vector<std::uint64_t>{6, 7}));
  EXPECT_EQ(ids(h->query("#r", q(m::around, 4, 5))), (std::vector<std::uint64_t>{3, 4, 5, 6}));
  EXPECT_EQ(ids(h->query("#r", q(m::between, 10, 3, 7))), (std::vector<std::uint64_t>{4, 5, 6}));
  EXPECT_EQ(ids(h->query("#r", q(m::between, 2, 8, 2))), (std::vector<std::uint64_t>{6, 7}));
  const auto priv = h->query("@alice bob", q(m::latest, 10));
  ASSERT_EQ(priv.size(), 1u);
  EXPECT_TRUE(priv[0]->is_private);
  EXPECT_TRUE(priv[0]->action);
  EXPECT_EQ(priv[0]->target, "bob");
  EXPECT_EQ(priv[0]->text, "psst");
  const auto r = h->query("#r", q(m::latest, 1));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0]->room, "#r");
  EXPECT_EQ(r[0]->ts_ms, 10000);
}

TEST(chat_history, sqlite_store_trims_by_count_and_age) {
  test::temp_dir dir;
  auto h = service::open_sqlite_history(dir.path / "h.sqlite3", {3, 0});
  for (const auto& e : ten()) h->add("#r", e);
  h->flush();
  EXPECT_EQ(ids(h->query("#r", q(m::latest, 100))), (std::vector<std::uint64_t>{8, 9, 10}));
  const std::int64_t now = util::realtime_ns() / 1'000'000;
  auto aged = service::open_sqlite_history(dir.path / "aged.sqlite3", {100, 60'000});
  aged->add("#r", msg(1, now - 120'000, "too old"));
  aged->add("#r", msg(2, now - 1'000, "recent"));
  aged->flush();
  EXPECT_EQ(ids(aged->query("#r", q(m::latest, 100))), (std::vector<std::uint64_t>{2}));
}

TEST(chat_history, a_damaged_or_unwritable_database_is_an_error_at_start) {
  test::temp_dir dir;
  const auto junk = dir.path / "junk.sqlite3";
  {
    std::ofstream f(junk);
    f << std::string(8192, 'x');
  }
  try {
    service::open_sqlite_history(junk, {10, 0});
    FAIL() << "a file that is not a database was opened";
  } catch (const service::history_error& e) {
    EXPECT_NE(std::string(e.what()).find(junk.string()), std::string::npos) << e.what();
  }
  // A database whose pages were overwritten in the middle.
  const auto hurt = dir.path / "hurt.sqlite3";
  {
    auto h = service::open_sqlite_history(hurt, {100000, 0});
    for (std::uint64_t i = 1; i <= 3000; ++i) h->add("#r", msg(i, static_cast<std::int64_t>(i), std::string(200, 'y')));
  }
  {
    std::fstream f(hurt, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4096 * 3);
    const std::string garbage(4096 * 4, '\x5a');
    f.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
  }
  EXPECT_THROW(service::open_sqlite_history(hurt, {10, 0}), service::history_error);
  // A path that cannot be a file (under a regular file).
  EXPECT_THROW(service::open_sqlite_history(junk / "h.sqlite3", {10, 0}), service::history_error);
}

TEST(irc_lines, parse_and_format) {
  proto::irc::message m;
  ASSERT_EQ(proto::irc::parse("@time=x;a=b\\sc :nick!u@h privmsg #room :hello there", m), proto::irc::parse_result::ok);
  EXPECT_EQ(m.command, "PRIVMSG");
  EXPECT_EQ(m.source, "nick!u@h");
  ASSERT_EQ(m.params.size(), 2u);
  EXPECT_EQ(m.params[1], "hello there");
  ASSERT_EQ(m.tags.size(), 2u);
  EXPECT_EQ(m.tags[1].second, "b c");
  EXPECT_EQ(proto::irc::parse("   ", m), proto::irc::parse_result::empty);
  EXPECT_EQ(proto::irc::parse("PRIVMSG #a :" + std::string(600, 'x'), m), proto::irc::parse_result::too_long);
  EXPECT_EQ(proto::irc::parse(std::string("PING \0x", 7), m), proto::irc::parse_result::bad);
  std::string out;
  proto::irc::append(out, "", "srv", "NOTICE", {"bob", "two words"});
  EXPECT_EQ(out, ":srv NOTICE bob :two words\r\n");
  EXPECT_EQ(proto::irc::escape_tag_value("a; b\\"), "a\\:\\sb\\\\");
  EXPECT_EQ(proto::irc::unescape_tag_value("a\\:\\sb\\\\"), "a; b\\");
  EXPECT_EQ(proto::irc::iso_time(1796532133123), "2026-12-06T04:42:13.123Z");
  EXPECT_EQ(proto::irc::parse_iso_time("2026-12-06T04:42:13.123Z"), 1796532133123);
  EXPECT_EQ(proto::irc::parse_iso_time("2026-12-06T04:42:13Z"), 1796532133000);
  EXPECT_FALSE(proto::irc::parse_iso_time("2026-12-06 04:42:13Z"));
  // Long and multi-line text: pieces within the limit, no character cut in two, CR and NUL gone.
  const std::string multi("ab\r\ncd\0e\n\nfghijkl", 17);
  const auto pieces = proto::irc::split_text(multi, 5);
  EXPECT_EQ(pieces, (std::vector<std::string>{"ab", "cde", "fghij", "kl"}));
  const auto utf8 = proto::irc::split_text("\xc3\xa9\xc3\xa9\xc3\xa9", 5);
  ASSERT_EQ(utf8.size(), 2u);
  EXPECT_EQ(utf8[0], "\xc3\xa9\xc3\xa9");
  EXPECT_EQ(proto::irc::one_line("a\r\nb"), "a  b");
}
