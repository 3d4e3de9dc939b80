#include "client/clock_adjust.hpp"
#include "util/rounding.hpp"

#include <linux/capability.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

namespace cskit::client {

clock_method choose_clock_method(double offset, std::optional<clock_method> forced) noexcept {
  if (forced) return *forced;
  return std::fabs(offset) < step_threshold_seconds ? clock_method::slew : clock_method::step;
}

const char* to_string(clock_method m) noexcept { return m == clock_method::slew ? "slew" : "step"; }

bool have_clock_privilege() noexcept {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capget, &hdr, data) != 0) return false;
  return (data[CAP_SYS_TIME / 32].effective & (1u << (CAP_SYS_TIME % 32))) != 0;
}

std::string clock_privilege_hint() {
  return "setting the clock needs the CAP_SYS_TIME capability, which this process does not have "
         "(run as root, or grant it: sudo setcap cap_sys_time+ep \"$(command -v cskit)\")";
}

bool adjust_clock(double offset, clock_method method, std::string& error) {
  if (!std::isfinite(offset)) {
    error = "offset is not a number";
    return false;
  }
  const auto total_ns = static_cast<long long>(util::round_to_int64(offset * 1e9));
  long long sec = total_ns / 1'000'000'000;
  long long nsec = total_ns % 1'000'000'000;
  if (nsec < 0) {  // the kernel wants 0 <= fraction < 1 s
    nsec += 1'000'000'000;
    --sec;
  }
  int rc;
  if (method == clock_method::slew) {
    // adjtime() takes microseconds, with the same sign convention.
    long long usec_total = util::round_to_int64(offset * 1e6);
    timeval delta{static_cast<time_t>(usec_total / 1'000'000), static_cast<suseconds_t>(usec_total % 1'000'000)};
    rc = ::adjtime(&delta, nullptr);
  } else {
    timex tx{};
    tx.modes = ADJ_SETOFFSET | ADJ_NANO;
    tx.time.tv_sec = static_cast<time_t>(sec);
    tx.time.tv_usec = static_cast<suseconds_t>(nsec);  // nanoseconds with ADJ_NANO
    rc = ::adjtimex(&tx);
  }
  if (rc < 0) {
    error = errno == EPERM ? clock_privilege_hint() : std::string(std::strerror(errno));
    return false;
  }
  return true;
}

}  // namespace cskit::client
