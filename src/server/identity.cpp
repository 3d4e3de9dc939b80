#include "server/identity.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "net/tls.hpp"
#include "server/config.hpp"

namespace cskit::server {
namespace {

std::string errno_text() { return std::strerror(errno); }

// Writes `text` to a new private file beside `path`, flushes it, and
// renames it into place.
void write_private_file(const std::filesystem::path& path, const std::string& text) {
  std::string tmp = path.string() + ".XXXXXX";
  int fd = ::mkstemp(tmp.data());  // mode 0600
  if (fd < 0) throw config_error("cannot create a file in " + path.parent_path().string() + ": " + errno_text());
  std::size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  const bool ok = done == text.size() && ::fsync(fd) == 0;
  const int saved = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(ok ? errno : saved);
    ::unlink(tmp.c_str());
    throw config_error("cannot write " + path.string() + ": " + why);
  }
}

bool present(const std::filesystem::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

// The default key file must be private: a key readable by others is no
// longer the server's alone.
void check_private(const std::filesystem::path& key) {
  struct stat st {};
  if (::stat(key.c_str(), &st) != 0) throw config_error("cannot read " + key.string() + ": " + errno_text());
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    throw config_error(key.string() + " is readable by other users; run: chmod 600 " + key.string());
  }
}

}  // namespace

std::filesystem::path default_cert_file(const std::filesystem::path& state_dir) { return state_dir / "server.crt"; }
std::filesystem::path default_key_file(const std::filesystem::path& state_dir) { return state_dir / "server.key"; }

identity_files ensure_default_identity(const std::filesystem::path& state_dir, const std::string& name) {
  identity_files files{default_cert_file(state_dir), default_key_file(state_dir)};
  std::error_code ec;
  std::filesystem::create_directories(state_dir, ec);
  if (ec) throw config_error("cannot create state directory " + state_dir.string() + ": " + ec.message());
  ::chmod(state_dir.c_str(), 0700);

  const auto lock_path = state_dir / ".identity.lock";
  int lock = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (lock < 0) throw config_error("cannot open " + lock_path.string() + ": " + errno_text());
  struct unlock_on_exit {
    int fd;
    ~unlock_on_exit() { ::close(fd); }  // releases the flock
  } guard{lock};
  while (::flock(lock, LOCK_EX) != 0) {
    if (errno != EINTR) throw config_error("cannot lock " + lock_path.string() + ": " + errno_text());
  }
  const bool have_cert = present(files.cert), have_key = present(files.key);
  if (have_cert && !have_key) {
    // Clients have pinned this key: never replace it silently.
    throw config_error("the server's TLS key " + files.key.string() + " is missing while " + files.cert.string() +
                       " exists: restore the key, or delete the certificate to make a new identity (every "
                       "client will then see a changed key)");
  }
  if (have_cert) {
    check_private(files.key);
    return files;
  }
  try {
    if (have_key) {
      // The certificate alone is gone (or creating it was interrupted):
      // certify the same key again, so that pinned fingerprints still match.
      check_private(files.key);
      std::ifstream in(files.key, std::ios::binary);
      std::ostringstream key_pem;
      if (!(in && key_pem << in.rdbuf())) throw config_error("cannot read " + files.key.string() + ": " + errno_text());
      write_private_file(files.cert, net::tls::make_self_signed(name, key_pem.str()).cert);
    } else {
      const auto pem = net::tls::make_self_signed(name);
      write_private_file(files.key, pem.key);  // the key first: a certificate is never without its key
      write_private_file(files.cert, pem.cert);
    }
  } catch (const net::tls::error& e) {
    throw config_error(e.what());
  }
  files.generated = true;
  check_private(files.key);
  return files;
}

}  // namespace cskit::server
