#pragma once
// The parts of resumable uploads in progress, by file identity, so that
// a part never outlives its transfer unreachable:
//
// * a newer upload of the same target that finds the part locked asks the
//   holding upload whether its peer is still there (a peer that went away
//   without closing, as a crashed or cut-off client does, holds the part
//   until the idle deadline); a holder whose peer does not answer is
//   closed and the newer upload resumes the part;
// * a commit of the target marks a part still held by an older upload as
//   superseded: when that upload ends, its part is removed instead of kept
//   for a resume that could only bring back an older version.

#include <sys/stat.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

namespace cskit::service {

class part_registry {
 public:
  using clock = std::chrono::steady_clock;
  /// Asks the holder whether its peer is alive; `done(alive)` is called at
  /// most once, on the holder's thread (not at all if it ends first).
  using prober = std::function<void(std::function<void(bool alive)> done)>;

  /// An upload's hold on its part (registered while the upload lives).
  class claim {
   public:
    claim(part_registry& owner, dev_t dev, ino_t ino, prober probe);
    ~claim();
    claim(const claim&) = delete;
    claim& operator=(const claim&) = delete;
    /// A later commit replaced the target: the part is no use for a resume.
    bool superseded() const noexcept { return superseded_.load(); }
    void probe(std::function<void(bool alive)> done) const { probe_(std::move(done)); }
    clock::time_point since() const noexcept { return since_; }

   private:
    friend class part_registry;
    part_registry& owner_;
    std::pair<dev_t, ino_t> key_;
    prober probe_;
    clock::time_point since_ = clock::now();
    std::atomic<bool> superseded_{false};
  };

  /// Registers the holder of the part `part` (its fstat).
  std::shared_ptr<claim> hold(const struct stat& part, prober probe);
  /// The claim on the part file `name` in `dirfd`, if an upload holds it.
  std::shared_ptr<claim> find(int dirfd, const std::string& name);
  /// After a commit of the target whose part file is `name` in `dirfd`:
  /// an upload that held that part since before `committed_after` is
  /// superseded.
  void supersede(int dirfd, const std::string& name, clock::time_point committed_after);

 private:
  void forget(const std::pair<dev_t, ino_t>& key) noexcept;

  std::mutex mu_;
  std::map<std::pair<dev_t, ino_t>, std::weak_ptr<claim>> claims_;
};

}  // namespace cskit::service
