// Times whole commands, as a user's shell would run them, with as little
// harness cost as possible: posix_spawn (vfork in glibc) and waitpid, stdin
// and output on /dev/null. Python's subprocess alone costs 0.7-1.4 ms per
// process on these VMs, more than some of the commands it would time.
//
//   bench_spawn RUNS CMD [ARG...]
//
// Runs CMD RUNS times in a row, after 5 untimed runs; every run must exit
// 0. Prints one JSON object: p50, p99, min and max in milliseconds.

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern char** environ;

namespace {

// One run; its wall time in milliseconds, or a negative number on failure.
double run_once(char** argv, const posix_spawn_file_actions_t& io) {
  const auto start = std::chrono::steady_clock::now();
  pid_t pid = 0;
  if (int e = ::posix_spawnp(&pid, argv[0], &io, nullptr, argv, environ)) {
    std::fprintf(stderr, "bench_spawn: cannot start %s: %s\n", argv[0], std::strerror(e));
    return -1;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  const auto end = std::chrono::steady_clock::now();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "bench_spawn: %s failed (status %d)\n", argv[0], status);
    return -1;
  }
  return std::chrono::duration<double, std::milli>(end - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_spawn RUNS CMD [ARG...]\n");
    return 2;
  }
  const long runs = std::strtol(argv[1], nullptr, 10);
  if (runs < 1 || runs > 1000000) {
    std::fprintf(stderr, "bench_spawn: RUNS must be 1 to 1000000\n");
    return 2;
  }
  posix_spawn_file_actions_t io;
  posix_spawn_file_actions_init(&io);
  posix_spawn_file_actions_addopen(&io, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&io, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&io, 2, "/dev/null", O_WRONLY, 0);
  char** cmd = argv + 2;
  for (int i = 0; i < 5; ++i) {
    if (run_once(cmd, io) < 0) return 1;
  }
  std::vector<double> ms;
  ms.reserve(static_cast<std::size_t>(runs));
  for (long i = 0; i < runs; ++i) {
    const double t = run_once(cmd, io);
    if (t < 0) return 1;
    ms.push_back(t);
  }
  posix_spawn_file_actions_destroy(&io);
  std::sort(ms.begin(), ms.end());
  auto at = [&](double q) { return ms[std::min(ms.size() - 1, static_cast<std::size_t>(q * static_cast<double>(ms.size() - 1)))]; };
  std::printf("{\"runs\":%zu,\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"min_ms\":%.4f,\"max_ms\":%.4f}\n", ms.size(), at(0.5),
              at(0.99), ms.front(), ms.back());
  return 0;
}
