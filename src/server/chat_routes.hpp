#pragma once
#include "server/session.hpp"
#include "service/chat_client.hpp"

namespace cskit::server {

/// Registers the chat.* requests (permission `chat`). `hub` must outlive the server.
void register_chat_service(server_context& ctx, service::chat_hub& hub);

}  // namespace cskit::server
