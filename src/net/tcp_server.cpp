#include "net/tcp_server.hpp"

#include <fcntl.h>
#include <unistd.h>

#include "net/admission.hpp"
#include "net/endpoint.hpp"
#include "net/listeners.hpp"
#include "net/service_manager.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <thread>
#include <unordered_map>
#include <vector>

namespace cskit::net {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

namespace {
std::string format_address(const tcp::endpoint& ep) {
  return format_host_port(ep.address().to_string(), ep.port());
}
}  // namespace

struct tcp_server::impl {
  struct loop {
    asio::io_context ioc{1};
    asio::executor_work_guard<asio::io_context::executor_type> work{ioc.get_executor()};
    flush_queue flush{ioc.get_executor()};
    // Touched only on this loop's thread.
    connection_limits limits;  // its connections refer to it: a reload changes theirs at once
    std::unordered_map<connection*, std::shared_ptr<connection>> connections;
  };

  // A listening socket and what its connections speak: the primary one
  // (options.port, `factory`, options.tls) and any added by add_listener.
  struct listener {
    explicit listener(asio::io_context& ioc) : acceptor(ioc) {}
    tcp::acceptor acceptor;
    handler_factory factory;
    std::shared_ptr<const tls::context> tls;
    refusal_encoder refusal;  // null: a cskit error frame
    connection::protocol_router router;  // null: the factory's handler, whatever ALPN says
  };

  server_options options;
  // Declared before `loops`: the connections on them give their slots back
  // when they are destroyed.
  admission logins;
  std::vector<std::unique_ptr<loop>> loops;
  std::vector<std::unique_ptr<listener>> listeners;  // [0]: the primary
  asio::signal_set signals;
  std::atomic<std::size_t> live{0};
  bool stopping = false;  // loop 0 only
  std::size_t next_loop = 0;
  // Declared after `loops`: destroyed first, while their io_context lives.
  std::vector<std::pair<loop*, std::unique_ptr<udp_endpoint>>> udp_endpoints;
  std::vector<std::pair<loop*, std::unique_ptr<tcp_echo_listener>>> echo_listeners;
  std::size_t next_side_loop = 0;

  // Side services go on the loops from the last one down, away from the
  // acceptor on loop 0 when there is more than one loop.
  loop& side_loop() { return *loops[(loops.size() - 1 - next_side_loop++ % loops.size())]; }

  impl(server_options o, handler_factory f)
      : options(std::move(o)),
        logins(options.max_unauthenticated, options.max_unauthenticated_per_source),
        loops(make_loops(options.threads)),
        signals(loops[0]->ioc, SIGINT, SIGTERM, SIGHUP) {
    for (auto& l : loops) l->limits = options.limits;
    auto& primary = *listeners.emplace_back(std::make_unique<listener>(loops[0]->ioc));
    primary.factory = std::move(f);
    primary.tls = options.tls;
    primary.router = options.protocol_router;
  }

  static std::vector<std::unique_ptr<loop>> make_loops(unsigned n) {
    std::vector<std::unique_ptr<loop>> v;
    for (unsigned i = 0; i < std::max(1u, n); ++i) v.push_back(std::make_unique<loop>());
    return v;
  }

  // Refused connections whose error frame is still in flight, lingering
  // on the loop they were accepted for: a few, so that a flood of refused
  // connections costs little more than closing them.
  static constexpr std::size_t max_lingering = 64;
  std::atomic<std::size_t> lingering{0};

  void reject(const listener& via, tcp::socket s, proto::errc code, std::string_view message = {}) {
    // Best effort, never blocks: the socket is fresh, so its send buffer has
    // room. The frame is cleartext even when the server speaks TLS: a
    // client shows it as sent before TLS, unauthenticated.
    error_code ec;
    s.non_blocking(true, ec);
    const std::string text(message.empty() ? proto::default_message(code) : message);
    std::string bytes = via.refusal ? via.refusal(text) : proto::encode_frame(proto::make_error(code, message));
    if (!bytes.empty()) s.send(asio::buffer(bytes), 0, ec);
    s.shutdown(tcp::socket::shutdown_send, ec);
    if (lingering >= max_lingering) {
      s.close(ec);
      return;
    }
    // Closing with unread input (a TLS client has already sent its
    // ClientHello) would send a reset, which can destroy the frame before
    // the client reads it: read and discard until the client closes, for
    // at most linger_timeout.
    struct state {
      tcp::socket socket;
      asio::steady_timer timer;
      char sink[512];
    };
    ++lingering;
    auto ex = s.get_executor();
    auto st = std::make_shared<state>(state{std::move(s), asio::steady_timer(ex), {}});
    st->timer.expires_after(options.limits.linger_timeout);
    st->timer.async_wait([st](const error_code& e) {
      error_code ignored;
      if (!e) st->socket.close(ignored);
    });
    drain(std::move(st));
  }

  template <class State>
  void drain(std::shared_ptr<State> st) {
    st->socket.async_read_some(asio::buffer(st->sink), [this, st](const error_code& e, std::size_t) {
      if (!e) return drain(st);
      error_code ignored;
      st->timer.cancel();
      st->socket.close(ignored);
      --lingering;
    });
  }

  // Refusals are logged at most once a second (a flood must not flood the log).
  clock::time_point last_refusal_log{};
  std::size_t refusals_unlogged = 0;

  void log_refusal(const std::string& what) {
    ++refusals_unlogged;
    const auto now = clock::now();
    if (now - last_refusal_log < std::chrono::seconds(1)) return;
    spdlog::warn("refusing connections: {} ({} refused since the last such message)", what, refusals_unlogged);
    refusals_unlogged = 0;
    last_refusal_log = now;
  }

  // A slot among the connections not logged in yet, or the refusal.
  bool admit(const listener& via, tcp::socket& s, admission_slot& slot) {
    error_code ec;
    const auto ep = s.remote_endpoint(ec);
    const source_key key = source_key::of(ec ? std::string() : ep.address().to_string());
    switch (logins.acquire(key)) {
      case admission::verdict::admitted: slot = admission_slot(&logins, key); return true;
      case admission::verdict::source_full:
        log_refusal(fmt::format("{} already has {} connections that have not logged in", key.describe(),
                                options.max_unauthenticated_per_source));
        reject(via, std::move(s), proto::errc::too_many_connections,
               "too many connections from your address have not logged in yet; try again later");
        return false;
      case admission::verdict::total_full:
        log_refusal(fmt::format("{} connections have not logged in", options.max_unauthenticated));
        reject(via, std::move(s), proto::errc::too_many_connections,
               "too many connections have not logged in yet; try again later");
        return false;
    }
    return false;
  }

  void adopt(const listener& via, loop& l, tcp::socket s, admission_slot slot) {
    auto c = std::make_shared<connection>(std::move(s), l.limits, via.factory(), &l.flush, via.tls);
    c->hold_admission(std::move(slot));
    if (via.router) c->set_protocol_router(via.router);
    l.connections.emplace(c.get(), c);
    c->start([this, &l](connection& done) {
      l.connections.erase(&done);
      live.fetch_sub(1, std::memory_order_relaxed);
    });
  }

  asio::awaitable<void> accept_loop(listener& via) {
    error_code ec;
    auto& acceptor = via.acceptor;
    while (!stopping) {
      loop& target = *loops[next_loop++ % loops.size()];
      tcp::socket s = co_await acceptor.async_accept(target.ioc, asio::redirect_error(asio::use_awaitable, ec));
      if (stopping) break;
      if (ec) {
        if (ec == asio::error::operation_aborted) break;
        spdlog::warn("accept failed: {}", ec.message());
        if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space) {
          // Out of file descriptors: back off instead of spinning.
          asio::steady_timer t(acceptor.get_executor(), std::chrono::milliseconds(100));
          co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        }
        continue;
      }
      if (live.load(std::memory_order_relaxed) >= options.max_connections) {
        log_refusal(fmt::format("the limit of {} connections is reached", options.max_connections));
        reject(via, std::move(s), proto::errc::too_many_connections);
        continue;
      }
      admission_slot slot;
      if (!admit(via, s, slot)) continue;
      live.fetch_add(1, std::memory_order_relaxed);
      asio::post(target.ioc, [this, &via, &target, s = std::move(s), slot = std::move(slot)]() mutable {
        adopt(via, target, std::move(s), std::move(slot));
      });
    }
  }

  // SIGINT and SIGTERM shut down. SIGHUP reloads and waits for the next,
  // unless it says that the terminal the server ran in has hung up: then
  // the server shuts down, as a program in a closed terminal does.
  void wait_for_signal() {
    signals.async_wait([this](const error_code& ec, int signo) {
      if (ec || stopping) return;
      if (signo != SIGHUP) {
        spdlog::info("received {}", signo == SIGINT ? "SIGINT" : "SIGTERM");
        return begin_shutdown();
      }
      if (started_in_terminal && !has_controlling_terminal()) {
        spdlog::info("received SIGHUP: the terminal hung up");
        return begin_shutdown();
      }
      reload();
      wait_for_signal();
    });
  }

  void reload() {
    if (!options.on_reload) {
      spdlog::warn("received SIGHUP: this server has nothing to reload; ignored");
      return;
    }
    spdlog::info("received SIGHUP: reloading the configuration");
    try {
      options.on_reload();
    } catch (const std::exception& e) {
      spdlog::error("reload failed: {}", e.what());
    }
  }

  // Whether the process has a controlling terminal (one that has hung up
  // is taken away by the kernel).
  static bool has_controlling_terminal() noexcept {
    const int fd = ::open("/dev/tty", O_RDONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return false;
    ::close(fd);
    return true;
  }
  const bool started_in_terminal = has_controlling_terminal();

  // Each loop's connections, one after another on that loop (a copy: a
  // callback may close a connection, which erases it).
  template <class F>
  void for_each_connection(F f) {
    for (auto& l : loops) {
      asio::post(l->ioc, [&l = *l, f] {
        std::vector<std::shared_ptr<connection>> cs;
        cs.reserve(l.connections.size());
        for (auto& [p, c] : l.connections) cs.push_back(c);
        for (auto& c : cs) f(*c);
      });
    }
  }

  void begin_shutdown() {
    if (stopping) return;
    stopping = true;
    notify_service_manager("STOPPING=1\nSTATUS=shutting down: sessions have the grace period to finish");
    spdlog::info("shutting down: no new connections; {} open, grace {} ms", live.load(), options.grace.count());
    error_code ec;
    for (auto& l : listeners) l->acceptor.close(ec);
    signals.cancel(ec);
    for (auto& [l, u] : udp_endpoints) asio::post(l->ioc, [u = u.get()] { u->stop(); });
    for (auto& [l, e] : echo_listeners) asio::post(l->ioc, [e = e.get()] { e->stop(); });
    for_each_connection([grace = options.grace](connection& c) { c.begin_shutdown(grace); });
    asio::co_spawn(loops[0]->ioc, finish_shutdown(), asio::detached);
  }

  asio::awaitable<void> wait_for_connections(clock::time_point until) {
    asio::steady_timer t(loops[0]->ioc);
    error_code ec;
    while (live.load() > 0 && clock::now() < until) {
      t.expires_after(std::chrono::milliseconds(10));
      co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }

  asio::awaitable<void> finish_shutdown() {
    co_await wait_for_connections(clock::now() + options.grace);
    if (live.load() > 0) {
      spdlog::warn("grace period over: closing {} remaining connection(s)", live.load());
      for_each_connection([](connection& c) { c.end_grace(); });
      co_await wait_for_connections(clock::now() + std::chrono::seconds(2));
    }
    for (auto& l : loops) {
      l->work.reset();
      l->ioc.stop();
    }
  }
};

tcp_server::tcp_server(server_options options, handler_factory factory)
    : impl_(std::make_unique<impl>(std::move(options), std::move(factory))) {}

tcp_server::~tcp_server() = default;

namespace {
void bind_acceptor(tcp::acceptor& a, const std::string& host, std::uint16_t port) {
  error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) throw std::system_error(ec, "invalid listen address '" + host + "' (give an IP address)");
  tcp::endpoint ep(addr, port);
  a.open(ep.protocol(), ec);
  if (ec) throw std::system_error(ec, "cannot open socket");
  a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (addr.is_v6()) a.set_option(asio::ip::v6_only(true), ec);
  a.bind(ep, ec);
  if (ec) throw std::system_error(ec, "cannot listen on " + format_address(ep));
  a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw std::system_error(ec, "cannot listen on " + format_address(ep));
}
}  // namespace

void tcp_server::listen() {
  bind_acceptor(impl_->listeners[0]->acceptor, impl_->options.host, impl_->options.port);
}

std::uint16_t tcp_server::local_port() const { return impl_->listeners[0]->acceptor.local_endpoint().port(); }

std::string tcp_server::local_address() const {
  return format_address(impl_->listeners[0]->acceptor.local_endpoint());
}

std::string tcp_server::add_listener(const std::string& host, std::uint16_t port, handler_factory factory,
                                     std::shared_ptr<const tls::context> tls, refusal_encoder refusal) {
  auto l = std::make_unique<impl::listener>(impl_->loops[0]->ioc);
  bind_acceptor(l->acceptor, host, port);
  l->factory = std::move(factory);
  l->tls = std::move(tls);
  l->refusal = std::move(refusal);
  std::string address = format_address(l->acceptor.local_endpoint());
  impl_->listeners.push_back(std::move(l));
  return address;
}

std::string tcp_server::add_udp(const std::string& host, std::uint16_t port, const udp_options& options,
                                std::shared_ptr<datagram_handler> handler) {
  auto& l = impl_->side_loop();
  auto u = std::make_unique<udp_endpoint>(l.ioc, options, std::move(handler));
  u->bind(host, port);
  std::string address = u->local_address();
  impl_->udp_endpoints.emplace_back(&l, std::move(u));
  return address;
}

std::string tcp_server::add_echo(const std::string& host, std::uint16_t port, const udp_options& options,
                                 std::shared_ptr<datagram_handler> handler, const tcp_echo_options& tcp_options) {
  auto& l = impl_->side_loop();
  // With port 0 the UDP port is picked first; the same TCP port may be
  // taken, so try a few times.
  for (int attempt = 0;; ++attempt) {
    auto u = std::make_unique<udp_endpoint>(l.ioc, options, handler);
    u->bind(host, port);
    auto e = std::make_unique<tcp_echo_listener>(l.ioc, tcp_options);
    try {
      e->bind(host, u->local_port());
    } catch (const std::system_error&) {
      if (port != 0 || attempt >= 20) throw;
      continue;
    }
    std::string address = u->local_address();
    impl_->udp_endpoints.emplace_back(&l, std::move(u));
    impl_->echo_listeners.emplace_back(&l, std::move(e));
    return address;
  }
}

void tcp_server::run() {
  auto& im = *impl_;
  // Every UDP service learns every UDP endpoint of the server: a datagram
  // forged to come from one of them is never answered.
  auto own = std::make_shared<own_endpoints>();
  bool any_wildcard = false;
  for (auto& [l, u] : im.udp_endpoints) {
    own->ports.push_back(u->local_port());
    if (u->wildcard()) any_wildcard = true;
    else own->addresses.push_back(u->bound_address());
  }
  if (any_wildcard) {
    for (const auto& a : host_addresses()) own->addresses.push_back(a);
  }
  for (auto& [l, u] : im.udp_endpoints) {
    u->set_own_endpoints(own);
    u->start();
  }
  for (auto& [l, e] : im.echo_listeners) e->start();
  im.wait_for_signal();
  for (auto& l : im.listeners) {
    asio::co_spawn(im.loops[0]->ioc, im.accept_loop(*l), [](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        spdlog::critical("accept loop failed: {}", ex.what());
      }
    });
  }
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < im.loops.size(); ++i) {
    threads.emplace_back([&l = *im.loops[i]] { l.ioc.run(); });
  }
  im.loops[0]->ioc.run();
  for (auto& t : threads) t.join();
}

void tcp_server::stop() {
  asio::post(impl_->loops[0]->ioc, [im = impl_.get()] { im->begin_shutdown(); });
}

void tcp_server::set_limits(const reloadable_limits& r) {
  auto& im = *impl_;
  im.logins.set_limits(r.max_unauthenticated, r.max_unauthenticated_per_source);
  // The options are read on the first loop (accepting, shutting down);
  // each loop keeps its own copy of the connection limits.
  asio::post(im.loops[0]->ioc, [&im, r] {
    im.options.max_connections = r.max_connections;
    im.options.max_unauthenticated = r.max_unauthenticated;
    im.options.max_unauthenticated_per_source = r.max_unauthenticated_per_source;
    im.options.limits = r.limits;
    im.options.grace = r.grace;
  });
  for (auto& l : im.loops) asio::post(l->ioc, [&l = *l, limits = r.limits] { l.limits = limits; });
}

void tcp_server::reload_sessions() {
  impl_->for_each_connection([](connection& c) { c.reload(); });
}

}  // namespace cskit::net
