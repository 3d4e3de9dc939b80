#pragma once
#include "server/session.hpp"
#include "service/files.hpp"

namespace cskit::server {

/// Registers the file requests: get (and a delta get's get.chunks and
/// get.ranges), fs.stat, fs.list and fs.digest need `files-read`;
/// put, put.data, put.end, put.abort, fs.mkdir, fs.rm, fs.mv, fs.symlink and
/// fs.setattr need `files-write`. `share` must outlive the server.
void register_file_service(server_context& ctx, service::file_share& share);

}  // namespace cskit::server
