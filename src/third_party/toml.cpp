// toml++ is a header library; with TOML_HEADER_ONLY=0 its users see only
// declarations and this translation unit compiles the implementation once
// (the library's documented way), instead of loading libtomlplusplus.so at
// every start (docs/architecture.md, "Start-up cost").
#define TOML_IMPLEMENTATION
#include <toml++/toml.h>
