"""TLS for the tests' own raw clients and fake servers (docs/protocol.md, "Transport security").

Python's ssl module does TLS 1.3 with the system's OpenSSL, but has no call for RFC 9266's
tls-exporter value; `exporter()` asks the same libssl for it through ctypes, on the SSL object
of the Python socket, which it finds and checks (same descriptor, TLS 1.3) before using it.
"""
import base64
import ctypes
import hashlib
import os
import socket
import ssl
import subprocess
import tempfile

ALPN = "cskit"

_libssl = ctypes.CDLL("libssl.so.3")
_libssl.SSL_get_fd.argtypes = [ctypes.c_void_p]
_libssl.SSL_get_fd.restype = ctypes.c_int
_libssl.SSL_version.argtypes = [ctypes.c_void_p]
_libssl.SSL_version.restype = ctypes.c_int
_libssl.SSL_export_keying_material.argtypes = [
    ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
    ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
_libssl.SSL_export_keying_material.restype = ctypes.c_int
TLS1_3_VERSION = 0x0304


def _ssl_pointer(sock):
    """The OpenSSL SSL* behind an ssl.SSLSocket: CPython's _ssl._SSLSocket object holds it right
    after PyObject_HEAD and one pointer (Modules/_ssl.c, PySSLSocket)."""
    obj = sock._sslobj
    ptr = ctypes.c_void_p.from_address(id(obj) + 3 * ctypes.sizeof(ctypes.c_void_p)).value
    if not ptr or _libssl.SSL_get_fd(ptr) != sock.fileno() or _libssl.SSL_version(ptr) != TLS1_3_VERSION:
        raise RuntimeError("cannot find the SSL object of this Python socket")
    return ptr


def exporter(sock):
    """RFC 9266 tls-exporter: 32 bytes under "EXPORTER-Channel-Binding", empty context."""
    out = ctypes.create_string_buffer(32)
    label = b"EXPORTER-Channel-Binding"
    if _libssl.SSL_export_keying_material(_ssl_pointer(sock), out, 32, label, len(label), None, 0, 0) != 1:
        raise RuntimeError("SSL_export_keying_material failed")
    return out.raw


def client_context(alpn=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the tests check the fingerprint themselves where it matters
    if alpn:
        ctx.set_alpn_protocols([ALPN])
    return ctx


def connect(port, timeout=10, host="127.0.0.1", source=None):
    """A TLS 1.3 connection to a cskit server (no key check: loopback tests)."""
    raw = socket.create_connection((host, port), timeout=timeout,
                                   source_address=(source, 0) if source else None)
    try:
        return client_context().wrap_socket(raw)
    except Exception:
        raw.close()
        raise


def fingerprint_of_der_cert(der):
    """SHA256:<unpadded base64 of the SHA-256 of the DER SubjectPublicKeyInfo>, via openssl(1)."""
    pem = ssl.DER_cert_to_PEM_cert(der).encode()
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=pem, capture_output=True, check=True).stdout
    spki = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub, capture_output=True,
                          check=True).stdout
    return "SHA256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode().rstrip("=")


def peer_fingerprint(sock):
    return fingerprint_of_der_cert(sock.getpeercert(binary_form=True))


class Identity:
    """A throwaway key and self-signed certificate for a fake server or relay, made by openssl(1)."""

    def __init__(self, name="fake-server"):
        self.dir = tempfile.mkdtemp(prefix="cskit-tls-")
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "2", "-subj", "/CN=" + name,
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
        with open(self.cert, "rb") as f:
            der = ssl.PEM_cert_to_DER_cert(f.read().decode())
        self.fingerprint = fingerprint_of_der_cert(der)

    def server_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.cert, self.key)
        ctx.set_alpn_protocols([ALPN])
        return ctx

    def wrap(self, conn, timeout=20):
        """Server side of a TLS handshake on an accepted socket."""
        conn.settimeout(timeout)
        return self.server_context().wrap_socket(conn, server_side=True)

    def cleanup(self):
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)
