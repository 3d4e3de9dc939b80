#pragma once
// Setting the system clock for `cskit sync`: slew (adjtime, gradual, the
// clock never jumps) or step (ADJ_SETOFFSET, one atomic jump).

#include <optional>
#include <string>

namespace cskit::client {

enum class clock_method { slew, step };

/// Offsets under this are slewed, larger ones stepped (as ntpdate does).
inline constexpr double step_threshold_seconds = 0.5;

clock_method choose_clock_method(double offset_seconds, std::optional<clock_method> forced) noexcept;
const char* to_string(clock_method m) noexcept;

/// True when this process has CAP_SYS_TIME in its effective set.
bool have_clock_privilege() noexcept;
/// The sentence a user needs when have_clock_privilege() is false.
std::string clock_privilege_hint();

/// Applies `offset_seconds` (positive: the clock moves forward). On
/// failure returns false and says why in `error`; the clock is unchanged.
bool adjust_clock(double offset_seconds, clock_method method, std::string& error);

}  // namespace cskit::client
