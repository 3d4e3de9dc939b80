#pragma once
// The web page's files (web/ in the source tree), compiled into the binary
// by cmake/embed_web.cmake: the page works without any file beside cskit.

#include <span>
#include <string_view>

namespace cskit::server {

struct web_asset {
  std::string_view path;  ///< "/index.html", "/app.js", ...
  std::string_view type;  ///< its Content-Type
  std::string_view body;
};

std::span<const web_asset> web_assets();

}  // namespace cskit::server
