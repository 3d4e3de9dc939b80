// Wires chat into the request registry; the session has checked the `chat`
// permission before any of these run.
#include "server/chat_routes.hpp"

namespace cskit::server {

void register_chat_service(server_context& ctx, service::chat_hub& hub) {
  for (const char* type : {"chat.hello", "chat.join", "chat.part", "chat.say", "chat.msg", "chat.who", "chat.rooms",
                           "chat.topic", "chat.nick", "chat.away", "chat.whois", "chat.quit"}) {
    ctx.registry.add(type, "chat", proto::permission::chat, [&hub](request& r) {
      if (!hub.options().enabled) {
        r.error(proto::errc::not_allowed, "chat is disabled on this server (its config has [chat] enabled = false)");
        return;
      }
      auto& client = r.scope.get<service::chat_client>("chat", [&] {
        auto c = std::make_shared<service::chat_client>(hub, r.conn, r.user.name);
        r.scope.on_close([raw = c.get()](std::string_view reason) { raw->set_close_reason(std::string(reason)); });
        return c;
      });
      client.handle(r.id, r.frame.type(), r.frame.header, r.frame.body);
    }, hub.options().enabled);
  }
}

}  // namespace cskit::server
