#include "app/command_table.hpp"

#include <algorithm>
#include <string>
#include <vector>

namespace cskit::app {

namespace {

// A function-local static: registrations run during static
// initialisation, in an order between files that nobody controls.
std::vector<const command_spec*>& table() {
  static std::vector<const command_spec*> t;
  return t;
}

// Optimal string alignment distance: Levenshtein plus the swap of two
// neighbours ("pnig" is one step from "ping", as git counts it).
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

}  // namespace

command_registration::command_registration(const command_spec& spec) : spec_(spec) {
  auto& t = table();
  t.insert(std::upper_bound(t.begin(), t.end(), &spec_,
                            [](const command_spec* x, const command_spec* y) { return x->order < y->order; }),
           &spec_);
}

std::span<const command_spec* const> commands() { return table(); }

const command_spec* find_command(std::string_view name) {
  for (const command_spec* c : table()) {
    if (c->name == name) return c;
  }
  return nullptr;
}

std::vector<std::string_view> similar_commands(std::string_view typed) {
  if (typed.empty() || typed.size() > 64) return {};
  std::vector<std::pair<std::size_t, std::string_view>> scored;
  std::vector<std::string_view> prefixed;
  for (const command_spec* c : table()) {
    if (c->hidden) continue;
    if (c->name.substr(0, typed.size()) == typed) prefixed.push_back(c->name);
    // Two steps only for names long enough that two steps leave most of
    // them ("rn" is not a typo of "mv").
    const std::size_t limit = std::min<std::size_t>(2, std::max<std::size_t>(1, c->name.size() / 2));
    if (const std::size_t d = edit_distance(typed, c->name); d <= limit) scored.emplace_back(d, c->name);
  }
  std::stable_sort(scored.begin(), scored.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  std::vector<std::string_view> out;
  for (const auto& [d, name] : scored) out.push_back(name);
  if (prefixed.size() == 1 && std::find(out.begin(), out.end(), prefixed.front()) == out.end()) {
    out.insert(out.begin(), prefixed.front());
  }
  return out;
}

}  // namespace cskit::app
