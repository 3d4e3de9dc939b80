#include "client/server_identity.hpp"

#include <cstdio>

#include "client/known_hosts.hpp"
#include "net/tls.hpp"
#include "util/paths.hpp"

namespace cskit::client {
namespace {

std::string changed_key_message(const std::string& host, const std::string& seen, const std::string& expected,
                                const std::string& where_pinned) {
  return "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
         "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
         "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
         "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n"
         "Someone could be eavesdropping on you right now (man-in-the-middle attack)!\n"
         "It is also possible that the server's key has just been changed.\n"
         "The key the server at " + host + " sent is\n  " + seen + "\n"
         "but " + where_pinned + " expects\n  " + expected + "\n"
         "Nothing was sent to the server. If the change is expected, " +
         (where_pinned.rfind("--fingerprint", 0) == 0 ? std::string("give the new fingerprint.")
                                                      : "remove that line and connect again to see the new key.") +
         "\nHost key verification failed.";
}

std::string unknown_key_message(const std::string& host, const std::string& fp, const std::string& ca_problem,
                                const std::filesystem::path& known_hosts) {
  std::string m = "the server at " + host + " is not known yet: its key fingerprint is " + fp;
  if (!ca_problem.empty()) m += " (and its certificate is not vouched for by a CA: " + ca_problem + ")";
  m += ".\nCheck the fingerprint with the server's operator (on the server: cskit serve --print-fingerprint),"
       " then connect once with\n  --fingerprint " + fp +
       "\nor with --accept-new to trust it on first use; either adds it to " +
       (known_hosts.empty() ? std::string("the known hosts file") : known_hosts.string()) +
       ".\nHost key verification failed.";
  return m;
}

void remember(const std::filesystem::path& file, const std::string& key, const std::string& fp) {
  if (file.empty()) return;
  try {
    add_known_host(file, key, fp);
    std::fprintf(stderr, "cskit: permanently added '%s' (%s) to the list of known hosts (%s)\n", key.c_str(),
                 fp.c_str(), file.string().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cskit: warning: could not remember the server's key: %s\n", e.what());
  }
}

}  // namespace

std::string check_server_identity(const net::tls::channel& channel, const net::host_port& where,
                                  const server_trust& trust) {
  const std::string fp = channel.peer_fingerprint();
  const std::string host = net::format_host_port(where.host, where.port);
  if (fp.empty()) throw client_error(failure::host_key_unknown, "the server at " + host + " sent no certificate");

  const auto file = trust.known_hosts.empty() ? default_known_hosts() : trust.known_hosts;
  const std::string key = known_host_key(where.host, where.port);
  auto look_up = [&] {
    known_host_result known;
    if (file.empty()) return known;
    try {
      return lookup_known_host(file, key, fp);
    } catch (const std::exception& e) {
      throw client_error(failure::host_key_unknown, e.what());
    }
  };
  // 1. A fingerprint the user pinned for this connection decides alone.
  if (trust.fingerprint) {
    if (fp != *trust.fingerprint) {
      throw client_error(failure::host_key_changed,
                         changed_key_message(host, fp, *trust.fingerprint, "--fingerprint (or the client config)"));
    }
    if (trust.remember_fingerprint && look_up().state == known_host_result::status::unknown) remember(file, key, fp);
    return "pinned fingerprint";
  }
  // 2. The known-hosts file.
  const known_host_result known = look_up();
  if (known.state == known_host_result::status::match) return "known_hosts line " + std::to_string(known.line);
  if (known.state == known_host_result::status::mismatch) {
    throw client_error(failure::host_key_changed,
                       changed_key_message(host, fp, known.stored,
                                           file.string() + " line " + std::to_string(known.line)));
  }
  // 3. The server of this user on this machine (what `make run` starts):
  // its certificate is in our own state directory, like its admin token.
  if (auto local = net::tls::fingerprint_of_pem_file(util::local_server_cert()); local && *local == fp) {
    return "this machine's own server (" + util::local_server_cert().string() + ")";
  }
  // 4. A certificate a CA vouches for, for the name the user typed.
  const std::string ca_problem = channel.verify_chain(trust.ca_file);
  if (ca_problem.empty()) return trust.ca_file.empty() ? "certificate (system CAs)" : "certificate (" + trust.ca_file.string() + ")";
  // 5. A new key: the user decides, once.
  if (trust.accept_new || (trust.confirm && trust.confirm(host, fp, ca_problem))) {
    remember(file, key, fp);
    return trust.accept_new ? "accepted as new (--accept-new)" : "accepted as new";
  }
  throw client_error(failure::host_key_unknown, unknown_key_message(host, fp, ca_problem, file));
}

}  // namespace cskit::client
