// Times whole commands, as a user's shell would run them, with as little
// harness cost as possible: posix_spawn (vfork in glibc) and waitpid, stdin
// and output on /dev/null. Python's subprocess alone costs 0.7-1.4 ms per
// process on these VMs, more than some of the commands it would time.
//
//   bench_spawn RUNS CMD [ARG...]
//   bench_spawn RUNS CMD_A [ARG...] --vs CMD_B [ARG...]
//
// Runs CMD RUNS times in a row, after 5 untimed runs; every run must exit
// 0. Prints one JSON object: p50, p99, min and max in milliseconds.
// With --vs, compares two commands (say, two builds of cskit) in one
// series: runs alternate A B B A A B ..., so that the VM's slow and fast
// phases fall on both alike. Prints each one's figures and B's p50 over A's.
// The first --vs is the separator, so A's own arguments cannot contain one.

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

struct stats {
  std::vector<double> ms;
  double at(double q) const {
    return ms[std::min(ms.size() - 1, static_cast<std::size_t>(q * static_cast<double>(ms.size() - 1)))];
  }
  void print(const char* name) const {
    std::printf("%s{\"runs\":%zu,\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"min_ms\":%.4f,\"max_ms\":%.4f}", name,
                ms.size(), at(0.5), at(0.99), ms.front(), ms.back());
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_spawn RUNS CMD [ARG...] [--vs CMD_B [ARG...]]\n");
    return 2;
  }
  const long runs = std::strtol(argv[1], nullptr, 10);
  if (runs < 1 || runs > 1000000) {
    std::fprintf(stderr, "bench_spawn: RUNS must be 1 to 1000000\n");
    return 2;
  }
  char** cmd_a = argv + 2;
  char** cmd_b = nullptr;
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--vs") == 0) {
      argv[i] = nullptr;  // ends A's argv
      cmd_b = argv + i + 1;
      if (i == 2 || cmd_b[0] == nullptr) {
        std::fprintf(stderr, "bench_spawn: --vs needs a command on both sides\n");
        return 2;
      }
      break;
    }
  }
  posix_spawn_file_actions_t io;
  posix_spawn_file_actions_init(&io);
  posix_spawn_file_actions_addopen(&io, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&io, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&io, 2, "/dev/null", O_WRONLY, 0);
  for (int i = 0; i < 5; ++i) {
    if (run_once(cmd_a, io) < 0) return 1;
    if (cmd_b && run_once(cmd_b, io) < 0) return 1;
  }
  stats a, b;
  a.ms.reserve(static_cast<std::size_t>(runs));
  b.ms.reserve(cmd_b ? static_cast<std::size_t>(runs) : 0);
  for (long i = 0; i < runs; ++i) {
    // A B, then B A: neither always runs right after the other.
    const bool a_first = cmd_b == nullptr || i % 2 == 0;
    for (int k = 0; k < (cmd_b ? 2 : 1); ++k) {
      const bool is_a = (k == 0) == a_first;
      const double t = run_once(is_a ? cmd_a : cmd_b, io);
      if (t < 0) return 1;
      (is_a ? a : b).ms.push_back(t);
    }
  }
  posix_spawn_file_actions_destroy(&io);
  std::sort(a.ms.begin(), a.ms.end());
  if (!cmd_b) {
    a.print("");
    std::printf("\n");
    return 0;
  }
  std::sort(b.ms.begin(), b.ms.end());
  a.print("{\"a\":");
  b.print(",\"b\":");
  std::printf(",\"b_over_a_p50\":%.4f}\n", b.at(0.5) / a.at(0.5));
  return 0;
}
