#include "service/chat_sqlite.hpp"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <set>
#include <thread>

#include "util/clock.hpp"

namespace cskit::service {

namespace {

using event_ptr = std::shared_ptr<const chat_event>;

constexpr int flag_action = 1, flag_notice = 2, flag_private = 4;

// Messages waiting to be written, at most; beyond it (the disk has failed
// for a long time) the oldest are dropped, and said so in the log.
constexpr std::size_t max_pending = 200000;

struct db_closer {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using db_ptr = std::unique_ptr<sqlite3, db_closer>;

struct stmt_closer {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using stmt_ptr = std::unique_ptr<sqlite3_stmt, stmt_closer>;

class sqlite_history final : public chat_history {
 public:
  sqlite_history(const std::filesystem::path& path, chat_retention r) : path_(path), retention_(r) {
    create_private();
    writer_db_ = open(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    check_integrity();
    exec(writer_db_.get(), "PRAGMA journal_mode=WAL");
    exec(writer_db_.get(), "PRAGMA synchronous=NORMAL");
    // The writer only appends (and trims the oldest rows): the pages it
    // needs are the right edges of two B-trees. SQLite's default cache
    // (2 MiB per connection) would keep every page it ever wrote.
    exec(writer_db_.get(), "PRAGMA cache_size=-256");
    exec(writer_db_.get(),
         "CREATE TABLE IF NOT EXISTS messages("
         " id INTEGER PRIMARY KEY,"      // the message id (IRC msgid)
         " conv TEXT NOT NULL,"          // '#room', or '@a b' for two accounts' private messages
         " ts INTEGER NOT NULL,"         // Unix milliseconds
         " nick TEXT NOT NULL,"
         " account TEXT NOT NULL,"
         " target TEXT NOT NULL,"        // private: the receiver's nickname
         " flags INTEGER NOT NULL,"      // 1 action, 2 notice, 4 private
         " text TEXT NOT NULL);"
         "CREATE INDEX IF NOT EXISTS messages_conv_id ON messages(conv, id);");
    // A database that cannot be written (a read-only file or directory) is
    // found now, not at the first message.
    exec(writer_db_.get(), "BEGIN IMMEDIATE");
    exec(writer_db_.get(), "ROLLBACK");
    reader_db_ = open(SQLITE_OPEN_READONLY);
    exec(reader_db_.get(), "PRAGMA cache_size=-1024");  // a CHATHISTORY of 1,000 lines reads ~200 KiB
    writer_ = std::thread([this] { write_loop(); });
  }

  ~sqlite_history() override {
    {
      std::lock_guard lock(m_);
      stopping_ = true;
    }
    wake_.notify_all();
    writer_.join();
  }

  std::uint64_t last_id() override {
    std::lock_guard lock(read_m_);
    stmt_ptr s = prepare(reader_db_.get(), "SELECT COALESCE(MAX(id), 0) FROM messages");
    return sqlite3_step(s.get()) == SQLITE_ROW ? static_cast<std::uint64_t>(sqlite3_column_int64(s.get(), 0)) : 0;
  }

  void add(const std::string& key, event_ptr e) override {
    if (retention_.count == 0) return;
    std::lock_guard lock(m_);
    if (pending_.size() >= max_pending) {
      ++dropped_;
      pending_.pop_front();
    }
    pending_.emplace_back(key, std::move(e));
    wake_.notify_one();
  }

  std::vector<event_ptr> query(const std::string& key, const chat_history_query& q) override {
    // What waits to be written (or is being written) is newer than
    // anything stored: the answer is drawn from the stored candidates for
    // `q` and those.
    std::vector<event_ptr> all;
    {
      std::lock_guard lock(m_);
      for (const auto* list : {&writing_, &pending_}) {
        for (const auto& [k, e] : *list) {
          if (k == key) all.push_back(e);
        }
      }
    }
    std::vector<event_ptr> stored = candidates(key, q);
    all.insert(all.end(), stored.begin(), stored.end());
    std::sort(all.begin(), all.end(), [](const event_ptr& a, const event_ptr& b) { return a->id < b->id; });
    all.erase(std::unique(all.begin(), all.end(), [](const event_ptr& a, const event_ptr& b) { return a->id == b->id; }),
              all.end());
    if (retention_.max_age_ms > 0) {
      const std::int64_t oldest = util::realtime_ns() / 1'000'000 - retention_.max_age_ms;
      all.erase(std::remove_if(all.begin(), all.end(), [&](const event_ptr& e) { return e->ts_ms < oldest; }),
                all.end());
    }
    return select_history(all, q);
  }

  void flush() override {
    std::unique_lock lock(m_);
    flushed_.wait(lock, [&] { return pending_.empty() && writing_.empty(); });
  }

 private:
  [[noreturn]] void fail(sqlite3* db, const std::string& what) const {
    throw history_error("chat history " + path_.string() + ": " + what + ": " +
                        (db ? sqlite3_errmsg(db) : "out of memory"));
  }

  // Private messages are in it: a new file is the owner's only (SQLite
  // gives its -wal and -shm files the same mode).
  void create_private() const {
    std::error_code ec;
    if (path_.has_parent_path()) std::filesystem::create_directories(path_.parent_path(), ec);
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) ::close(fd);
  }

  db_ptr open(int flags) const {
    sqlite3* raw = nullptr;
    const int rc = sqlite3_open_v2(path_.c_str(), &raw, flags | SQLITE_OPEN_NOMUTEX, nullptr);
    db_ptr db(raw);
    if (rc != SQLITE_OK) fail(raw, "cannot open");
    sqlite3_busy_timeout(raw, 5000);
    sqlite3_extended_result_codes(raw, 1);
    return db;
  }

  void exec(sqlite3* db, const char* sql) const {
    char* err = nullptr;
    if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      const std::string why = err ? err : "error";
      sqlite3_free(err);
      throw history_error("chat history " + path_.string() + ": " + why +
                          " (is it a SQLite database this user may write?)");
    }
  }

  stmt_ptr prepare(sqlite3* db, const char* sql) const {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK) fail(db, "cannot prepare a statement");
    return stmt_ptr(s);
  }

  void check_integrity() const {
    stmt_ptr s;
    try {
      s = prepare(writer_db_.get(), "PRAGMA quick_check");
    } catch (const history_error& e) {
      throw history_error(std::string(e.what()) + " (not a SQLite database, or a damaged one)");
    }
    const int rc = sqlite3_step(s.get());
    const char* verdict = rc == SQLITE_ROW ? reinterpret_cast<const char*>(sqlite3_column_text(s.get(), 0)) : nullptr;
    if (rc != SQLITE_ROW || !verdict || std::string_view(verdict) != "ok") {
      throw history_error("chat history " + path_.string() + " is damaged (" +
                          (verdict ? verdict : sqlite3_errmsg(writer_db_.get())) +
                          "); move it away to start with an empty history");
    }
  }

  // ------------------------------------------------------------ writing

  void write_loop() {
    for (;;) {
      {
        std::unique_lock lock(m_);
        wake_.wait(lock, [&] { return stopping_ || !pending_.empty(); });
        if (pending_.empty()) return;  // stopping, everything written
        writing_.swap(pending_);
      }
      write_batch();
      {
        std::lock_guard lock(m_);
        writing_.clear();
      }
      flushed_.notify_all();
    }
  }

  void write_batch() {
    try {
      sqlite3* db = writer_db_.get();
      exec(db, "BEGIN");
      stmt_ptr ins = prepare(db, "INSERT OR IGNORE INTO messages(id, conv, ts, nick, account, target, flags, text) "
                                 "VALUES(?, ?, ?, ?, ?, ?, ?, ?)");
      std::set<std::string> touched;
      for (const auto& [key, e] : writing_) {
        insert(ins.get(), key, *e);
        touched.insert(key);
      }
      for (const auto& key : touched) trim(key);
      exec(db, "COMMIT");
      report_drops();
    } catch (const history_error& e) {
      // The disk is full or failing: the batch is lost; said loudly.
      sqlite3_exec(writer_db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
      spdlog::error("{} ({} messages not stored)", e.what(), writing_.size());
    }
  }

  void insert(sqlite3_stmt* s, const std::string& key, const chat_event& e) {
    sqlite3_reset(s);
    sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(e.id));
    sqlite3_bind_text(s, 2, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, e.ts_ms);
    sqlite3_bind_text(s, 4, e.nick.data(), static_cast<int>(e.nick.size()), SQLITE_STATIC);
    sqlite3_bind_text(s, 5, e.account.data(), static_cast<int>(e.account.size()), SQLITE_STATIC);
    sqlite3_bind_text(s, 6, e.target.data(), static_cast<int>(e.target.size()), SQLITE_STATIC);
    sqlite3_bind_int(s, 7, (e.action ? flag_action : 0) | (e.notice ? flag_notice : 0) | (e.is_private ? flag_private : 0));
    sqlite3_bind_text(s, 8, e.text.data(), static_cast<int>(e.text.size()), SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_DONE) fail(writer_db_.get(), "cannot store a message");
  }

  // Keeps the newest `count` messages of `key`, none older than max_age.
  void trim(const std::string& key) {
    sqlite3* db = writer_db_.get();
    stmt_ptr del = prepare(db, "DELETE FROM messages WHERE conv = ?1 AND id <= (SELECT id FROM messages WHERE conv = ?1 "
                               "ORDER BY id DESC LIMIT 1 OFFSET ?2)");
    sqlite3_bind_text(del.get(), 1, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
    sqlite3_bind_int64(del.get(), 2, static_cast<sqlite3_int64>(retention_.count));
    if (sqlite3_step(del.get()) != SQLITE_DONE) fail(db, "cannot apply the retention");
    if (retention_.max_age_ms <= 0) return;
    stmt_ptr old = prepare(db, "DELETE FROM messages WHERE conv = ? AND ts < ?");
    sqlite3_bind_text(old.get(), 1, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
    sqlite3_bind_int64(old.get(), 2, util::realtime_ns() / 1'000'000 - retention_.max_age_ms);
    if (sqlite3_step(old.get()) != SQLITE_DONE) fail(db, "cannot apply the retention");
  }

  void report_drops() {
    std::size_t dropped;
    {
      std::lock_guard lock(m_);
      dropped = std::exchange(dropped_, 0);
    }
    if (dropped) spdlog::error("chat history {}: {} messages were dropped while writes failed", path_.string(), dropped);
  }

  // ------------------------------------------------------------ reading

  // Stored messages of `key` that can be in the answer to `q` (a superset
  // of it), oldest first.
  std::vector<event_ptr> candidates(const std::string& key, const chat_history_query& q) {
    using m = chat_history_query::mode;
    std::vector<event_ptr> out;
    const auto& a = q.a;
    const auto& b = q.b;
    switch (q.what) {
      case m::latest:
        if (a.any) fetch(out, key, nullptr, "", nullptr, "", false, q.limit);
        else fetch(out, key, &a, ">", nullptr, "", false, q.limit);
        break;
      case m::before: fetch(out, key, &a, "<", nullptr, "", false, q.limit); break;
      case m::after: fetch(out, key, &a, ">", nullptr, "", true, q.limit); break;
      case m::around:
        fetch(out, key, &a, "<", nullptr, "", false, q.limit);
        fetch(out, key, &a, ">=", nullptr, "", true, q.limit);
        break;
      case m::between:
        fetch(out, key, &a, ">", &b, "<", true, q.limit);
        fetch(out, key, &b, ">", &a, "<", true, q.limit);
        fetch(out, key, &a, ">", &b, "<", false, q.limit);
        fetch(out, key, &b, ">", &a, "<", false, q.limit);
        break;
    }
    return out;
  }

  // Up to `limit` messages of `key` with `r1 op1` and `r2 op2`, the first
  // ones (ascending) or the last ones.
  void fetch(std::vector<event_ptr>& out, const std::string& key, const chat_history_query::ref* r1,
             std::string_view op1, const chat_history_query::ref* r2, std::string_view op2, bool ascending,
             std::size_t limit) {
    std::string sql = "SELECT id, ts, nick, account, target, flags, text FROM messages WHERE conv = ?";
    auto cond = [&](const chat_history_query::ref* r, std::string_view op) {
      if (!r) return;
      sql += std::string(" AND ") + (r->by_id ? "id " : "ts ") + std::string(op) + " ?";
    };
    cond(r1, op1);
    cond(r2, op2);
    // Expired rows wait for the next write to the conversation to go: never
    // let them take the places of live ones under LIMIT.
    const bool aged = retention_.max_age_ms > 0;
    if (aged) sql += " AND ts >= ?";
    sql += ascending ? " ORDER BY id ASC LIMIT ?" : " ORDER BY id DESC LIMIT ?";
    std::lock_guard lock(read_m_);
    stmt_ptr s = prepare(reader_db_.get(), sql.c_str());
    int i = 1;
    sqlite3_bind_text(s.get(), i++, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
    for (const auto* r : {r1, r2}) {
      if (r) sqlite3_bind_int64(s.get(), i++, r->by_id ? static_cast<sqlite3_int64>(r->id) : r->ts_ms);
    }
    if (aged) sqlite3_bind_int64(s.get(), i++, util::realtime_ns() / 1'000'000 - retention_.max_age_ms);
    sqlite3_bind_int64(s.get(), i, static_cast<sqlite3_int64>(std::min<std::size_t>(limit, 1u << 20)));
    int rc;
    while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) out.push_back(row(s.get(), key));
    if (rc != SQLITE_DONE) spdlog::error("chat history {}: reading failed: {}", path_.string(), sqlite3_errmsg(reader_db_.get()));
  }

  static event_ptr row(sqlite3_stmt* s, const std::string& key) {
    auto text = [&](int col) {
      const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, col));
      return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s, col))) : std::string();
    };
    auto e = std::make_shared<chat_event>();
    e->what = chat_event::kind::message;
    e->id = static_cast<std::uint64_t>(sqlite3_column_int64(s, 0));
    e->ts_ms = sqlite3_column_int64(s, 1);
    e->nick = text(2);
    e->account = text(3);
    e->target = text(4);
    const int flags = sqlite3_column_int(s, 5);
    e->action = flags & flag_action;
    e->notice = flags & flag_notice;
    e->is_private = flags & flag_private;
    e->text = text(6);
    if (!e->is_private) e->room = key;
    return e;
  }

  const std::filesystem::path path_;
  const chat_retention retention_;
  db_ptr writer_db_;  // the writer thread's (and the constructor's)
  db_ptr reader_db_;  // queries, under read_m_
  std::mutex read_m_;
  std::mutex m_;
  std::condition_variable wake_, flushed_;
  std::deque<std::pair<std::string, event_ptr>> pending_;  // under m_
  std::deque<std::pair<std::string, event_ptr>> writing_;  // under m_ (the writer reads it unlocked)
  std::size_t dropped_ = 0;                                // under m_
  bool stopping_ = false;                                  // under m_
  std::thread writer_;
};

}  // namespace

std::unique_ptr<chat_history> open_sqlite_history(const std::filesystem::path& path, chat_retention retention) {
  return std::make_unique<sqlite_history>(path, retention);
}

}  // namespace cskit::service
