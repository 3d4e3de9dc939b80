#pragma once
// Sizes as people read them: "3.0 GiB", "512 B".

#include <cstdint>
#include <cstdio>
#include <string>

namespace cskit::util {

/// Bytes in binary units, one decimal beyond bytes: 512 B, 1.5 KiB, 3.0 GiB.
inline std::string human_bytes(double b) {
  static constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (b >= 1024 && u < 5) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

}  // namespace cskit::util
