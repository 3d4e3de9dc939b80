#include "proto/errc.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>

using namespace cskit::proto;

TEST(errc, every_code_has_a_unique_wire_name_that_round_trips) {
  std::set<std::string> names;
  for (int i = 0; i <= static_cast<int>(errc::io_error); ++i) {
    auto e = static_cast<errc>(i);
    std::string name(to_wire(e));
    EXPECT_FALSE(name.empty());
    EXPECT_TRUE(names.insert(name).second) << "duplicate wire name " << name;
    EXPECT_EQ(errc_from_wire(name), e) << name;
    EXPECT_FALSE(default_message(e).empty());
  }
  EXPECT_FALSE(errc_from_wire("no_such_code"));
}

TEST(errc, wire_names_are_stable) {
  // These names are part of the protocol: changing one breaks clients.
  EXPECT_EQ(to_wire(errc::auth_failed), "auth_failed");
  EXPECT_EQ(to_wire(errc::permission_denied), "permission_denied");
  EXPECT_EQ(to_wire(errc::header_too_large), "header_too_large");
  EXPECT_EQ(to_wire(errc::handshake_required), "handshake_required");
  EXPECT_EQ(to_wire(errc::unsupported_version), "unsupported_version");
  EXPECT_EQ(to_wire(errc::idle_timeout), "idle_timeout");
}

TEST(errc, std_error_code_integration) {
  std::error_code ec = errc::bad_json;
  EXPECT_EQ(ec.category().name(), std::string("cskit.protocol"));
  EXPECT_EQ(ec.message(), std::string(default_message(errc::bad_json)));
  EXPECT_TRUE(ec);
}
