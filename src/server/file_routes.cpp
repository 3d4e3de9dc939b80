// Wires the file service into the request registry. The session has already
// checked authentication and the permission before any of these run.
#include "server/file_routes.hpp"

#include "net/connection.hpp"

namespace cskit::server {

namespace {
service::files_session& session_for(request& r, service::file_share& share) {
  return r.scope.get<service::files_session>(
      "files", [&] {
        return std::make_shared<service::files_session>(share, r.conn,
                                                        r.user.permissions.has(proto::permission::files_read),
                                                        r.user.name);
      });
}
}  // namespace

void register_file_service(server_context& ctx, service::file_share& share) {
  const auto read = proto::permission::files_read;
  const auto write = proto::permission::files_write;
  auto queued = [&share](request& r) {
    session_for(r, share).request(r.id, std::move(r.frame.header), std::move(r.frame.body));
  };
  for (const char* type : {"get", "fs.stat", "fs.list", "fs.digest"}) ctx.registry.add(type, "files", read, queued);
  for (const char* type : {"put", "fs.mkdir", "fs.rm", "fs.mv", "fs.symlink", "fs.setattr"}) {
    ctx.registry.add(type, "files", write, queued);
  }
  // Bulk data: the body goes straight into the part file as it arrives.
  ctx.registry.add_streamed(
      "put.data", "files", write,
      [&share](request& r, std::string_view part) { session_for(r, share).put_data(r.id, r.frame.header, part); },
      [&share](request& r) {
        auto& s = session_for(r, share);
        if (!r.body_streamed) s.put_data(r.id, r.frame.header, r.frame.body);  // an empty body
        s.put_data_done(r.id);
      });
  ctx.registry.add("put.end", "files", write, [&share](request& r) { session_for(r, share).put_end(r.id, r.frame.header); });
  // Delta transfer reads the target's old content: files-read too (an
  // upload, which needs files-write, must be open for either).
  ctx.registry.add("put.chunks", "files", read,
                   [&share](request& r) { session_for(r, share).put_chunks(r.id, r.frame.body); });
  ctx.registry.add("put.copy", "files", read,
                   [&share](request& r) { session_for(r, share).put_copy(r.id, r.frame.header); });
  // A delta download's questions: answered by the download in progress
  // (the one holding the line), not queued behind it.
  ctx.registry.add("get.chunks", "files", read,
                   [&share](request& r) { session_for(r, share).get_chunks(r.id, r.frame.body); });
  ctx.registry.add("get.ranges", "files", read,
                   [&share](request& r) { session_for(r, share).get_ranges(r.id, r.frame.body); });
  ctx.registry.add("put.abort", "files", write,
                   [&share](request& r) { session_for(r, share).put_abort(r.id, r.frame.header); });
}

}  // namespace cskit::server
