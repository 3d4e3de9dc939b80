#include "proto/frame.hpp"

#include <algorithm>
#include <cstring>
#include <system_error>

#include "proto/utf8.hpp"

namespace cskit::proto {

std::string_view frame::type() const {
  auto it = header.find("type");
  if (it == header.end() || !it->is_string()) return {};
  return it->get_ref<const std::string&>();
}

std::optional<std::uint64_t> frame::id() const {
  auto it = header.find("id");
  if (it == header.end() || !it->is_number_unsigned()) return std::nullopt;
  return it->get<std::uint64_t>();
}

errc validate_header(const json& header, const decoder_limits& limits, std::uint64_t& body_length) {
  if (!header.is_object()) return errc::header_not_object;
  auto type = header.find("type");
  if (type == header.end() || !type->is_string() || type->get_ref<const std::string&>().empty()) {
    return errc::missing_type;
  }
  body_length = 0;
  if (auto body = header.find("body"); body != header.end()) {
    // nlohmann stores non-negative integer literals as number_unsigned;
    // negatives, fractions and values beyond uint64 are something else.
    if (!body->is_number_unsigned()) return errc::bad_body_length;
    body_length = body->get<std::uint64_t>();
    if (body_length > limits.max_body) return errc::body_too_large;
  }
  if (auto id = header.find("id"); id != header.end() && !id->is_number_unsigned()) {
    return errc::bad_id;
  }
  return errc::ok;
}

void frame_decoder::reset() noexcept {
  phase_ = phase::length;
  error_ = errc::ok;
  length_have_ = 0;
  header_need_ = 0;
  header_buf_.clear();
  header_buf_.shrink_to_fit();
  body_need_ = 0;
  current_ = frame{};
  header_reported_ = streaming_ = false;
  part_ = {};
}

frame_decoder::status frame_decoder::fail(errc e) noexcept {
  error_ = e;
  header_buf_.clear();
  header_buf_.shrink_to_fit();
  current_ = frame{};
  return status::error;
}

errc frame_decoder::parse_header(std::string_view bytes) {
  if (!is_valid_utf8(bytes)) return errc::invalid_utf8;
  json header = json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return errc::bad_json;
  errc e = validate_header(header, limits_, body_need_);
  if (e != errc::ok) return e;
  current_.header = std::move(header);
  current_.body.clear();
  return errc::ok;
}

frame_decoder::status frame_decoder::decode(std::string_view& in, frame& out) {
  if (error_ != errc::ok) return status::error;
  for (;;) {
    switch (phase_) {
      case phase::length: {
        std::size_t take = std::min(in.size(), length_prefix_size - length_have_);
        if (take == 0) return status::need_more;
        std::memcpy(length_buf_ + length_have_, in.data(), take);
        length_have_ += take;
        in.remove_prefix(take);
        if (length_have_ < length_prefix_size) return status::need_more;
        std::uint32_t n = (std::uint32_t{length_buf_[0]} << 24) | (std::uint32_t{length_buf_[1]} << 16) |
                          (std::uint32_t{length_buf_[2]} << 8) | std::uint32_t{length_buf_[3]};
        if (n == 0) return fail(errc::empty_header);
        if (n > limits_.max_header) return fail(errc::header_too_large);
        header_need_ = n;
        phase_ = phase::header;
        break;
      }
      case phase::header: {
        errc e;
        if (header_buf_.empty() && in.size() >= header_need_) {
          // Whole header present: parse in place, no copy.
          e = parse_header(in.substr(0, header_need_));
          in.remove_prefix(header_need_);
        } else {
          std::size_t take = std::min<std::size_t>(in.size(), header_need_ - header_buf_.size());
          header_buf_.append(in.data(), take);
          in.remove_prefix(take);
          if (header_buf_.size() < header_need_) return status::need_more;
          e = parse_header(header_buf_);
          header_buf_.clear();
          if (header_buf_.capacity() > 4096) header_buf_.shrink_to_fit();
        }
        if (e != errc::ok) return fail(e);
        phase_ = phase::body;
        break;
      }
      case phase::body: {
        if (report_headers_ && !header_reported_ && body_need_ > 0) {
          header_reported_ = true;
          return status::header;
        }
        if (streaming_ && body_need_ > 0) {
          std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(in.size(), body_need_));
          if (take == 0) return status::need_more;
          part_ = in.substr(0, take);
          in.remove_prefix(take);
          body_need_ -= take;
          return status::body_part;
        }
        if (body_need_ > 0) {
          std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(in.size(), body_need_));
          if (current_.body.empty()) {
            // Reserve what is already here, or at most 64 KiB: memory grows
            // with bytes received, never with what the peer merely declared.
            current_.body.reserve(static_cast<std::size_t>(
                std::min<std::uint64_t>(body_need_, std::max<std::size_t>(take, 64 * 1024))));
          }
          current_.body.append(in.data(), take);
          in.remove_prefix(take);
          body_need_ -= take;
          if (body_need_ > 0) return status::need_more;
        }
        // Moved-from members are valid and empty; parse_header overwrites
        // them, so no fresh (allocating) json::object() per frame.
        out = std::move(current_);
        phase_ = phase::length;
        length_have_ = 0;
        header_reported_ = streaming_ = false;
        part_ = {};
        return status::frame;
      }
    }
  }
}

namespace {
// Appends the length prefix and the header, declaring `body_length`.
errc encode_prefix_and_header(std::string& out, const json& header, std::uint64_t body_length) {
  if (!header.is_object()) return errc::header_not_object;
  auto type = header.find("type");
  if (type == header.end() || !type->is_string() || type->get_ref<const std::string&>().empty()) {
    return errc::missing_type;
  }
  if (header.contains("body")) return errc::bad_body_length;
  if (body_length > max_body_size) return errc::body_too_large;

  const std::size_t start = out.size();
  out.append(length_prefix_size, '\0');
  out += header.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
  if (body_length > 0) {
    out.pop_back();  // the closing '}' of a non-empty object
    out += ",\"body\":";
    out += std::to_string(body_length);
    out += '}';
  }
  const std::size_t header_len = out.size() - start - length_prefix_size;
  if (header_len > max_header_size) {
    out.resize(start);
    return errc::header_too_large;
  }
  out[start + 0] = static_cast<char>((header_len >> 24) & 0xFF);
  out[start + 1] = static_cast<char>((header_len >> 16) & 0xFF);
  out[start + 2] = static_cast<char>((header_len >> 8) & 0xFF);
  out[start + 3] = static_cast<char>(header_len & 0xFF);
  return errc::ok;
}
}  // namespace

errc encode_frame(std::string& out, const json& header, std::string_view body) {
  errc e = encode_prefix_and_header(out, header, body.size());
  if (e == errc::ok) out.append(body.data(), body.size());
  return e;
}

errc encode_frame_header(std::string& out, const json& header, std::uint64_t body_length) {
  return encode_prefix_and_header(out, header, body_length);
}

std::string encode_frame(const json& header, std::string_view body) {
  std::string out;
  errc e = encode_frame(out, header, body);
  if (e != errc::ok) throw std::system_error(make_error_code(e));
  return out;
}

json make_error(errc code, std::string_view message, std::optional<std::uint64_t> id) {
  json h = {{"type", "error"},
            {"code", to_wire(code)},
            {"message", message.empty() ? default_message(code) : message}};
  if (id) h["id"] = *id;
  return h;
}

}  // namespace cskit::proto
