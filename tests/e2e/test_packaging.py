"""The Debian package and `make install`, as a packager and an admin meet them:
the files the package holds, its control data, the binary in a scratch root,
the systemd unit (verified and rated by systemd-analyze), the man pages
rendered by man, the completions loaded by their shells, and the packaged
config loaded by the server."""
import gzip
import glob
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from harness import BIN

BUILD = os.environ.get("CSKIT_BUILD_DIR") or os.path.dirname(BIN)


def install_prefix():
    """The build's CMAKE_INSTALL_PREFIX (the release preset's is /usr; make install PREFIX=... changes it)."""
    with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
        for line in f:
            if line.startswith("CMAKE_INSTALL_PREFIX:"):
                return line.split("=", 1)[1].strip()
    return "/usr/local"


PREFIX = install_prefix()
ETC = "/etc" if PREFIX == "/usr" else PREFIX + "/etc"
UNITS = "/lib/systemd/system" if PREFIX == "/usr" else PREFIX + "/lib/systemd/system"
EXPECTED = tuple("." + p for p in (
    f"{PREFIX}/bin/cskit",
    f"{PREFIX}/share/man/man1/cskit.1.gz",
    f"{PREFIX}/share/man/man5/cskit.toml.5.gz",
    f"{PREFIX}/share/bash-completion/completions/cskit",
    f"{PREFIX}/share/zsh/vendor-completions/_cskit",
    f"{PREFIX}/share/fish/vendor_completions.d/cskit.fish",
    f"{UNITS}/cskit.service",
    f"{PREFIX}/lib/sysusers.d/cskit.conf",
    f"{ETC}/cskit/cskit.toml",
))
BIN_IN, MAN1, MAN5, BASH, ZSH, FISH, UNIT, SYSUSERS, CONF = (p[2:] for p in EXPECTED)


def run(*args, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 300)
    return subprocess.run(list(args), **kw)


class DebianPackage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="cskit-deb-")
        r = run("cpack", "-G", "DEB", "--config", os.path.join(BUILD, "CPackConfig.cmake"), "-B", cls.tmp)
        if r.returncode != 0:
            raise RuntimeError(f"cpack failed: {r.stdout}\n{r.stderr}")
        debs = glob.glob(os.path.join(cls.tmp, "cskit_*.deb"))
        if len(debs) != 1:
            raise RuntimeError(f"expected one package, found {debs}")
        cls.deb = debs[0]
        cls.root = os.path.join(cls.tmp, "root")
        r = run("dpkg-deb", "-x", cls.deb, cls.root)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_the_package_holds_every_file(self):
        listing = run("dpkg-deb", "-c", self.deb).stdout
        paths = {line.split()[-1] for line in listing.splitlines()}
        for path in EXPECTED:
            self.assertIn(path, paths)
        self.assertRegex(os.path.basename(self.deb), r"^cskit_\d+\.\d+\.\d+_[a-z0-9]+\.deb$")

    def test_control_data(self):
        info = run("dpkg-deb", "-I", self.deb).stdout
        self.assertIn("Package: cskit", info)
        self.assertRegex(info, r"Version: \d+\.\d+\.\d+")
        ctl = os.path.join(self.tmp, "control")
        self.assertEqual(run("dpkg-deb", "-e", self.deb, ctl).returncode, 0)
        with open(os.path.join(ctl, "conffiles")) as f:
            conffiles = f.read().split()
        self.assertEqual(conffiles, ["/" + CONF])
        # A conffile must be in the package (CPack does not check it).
        listing = run("dpkg-deb", "-c", self.deb).stdout
        self.assertIn("." + conffiles[0], {line.split()[-1] for line in listing.splitlines()})
        # The config will hold tokens: not readable by others (postinst
        # gives it to the group cskit).
        listing = run("dpkg-deb", "-c", self.deb).stdout
        conf_line = next(line for line in listing.splitlines() if line.endswith("./" + CONF))
        self.assertTrue(conf_line.startswith("-rw-r-----"), conf_line)
        for script in ("postinst", "prerm", "postrm"):
            path = os.path.join(ctl, script)
            self.assertTrue(os.access(path, os.X_OK), script)
            self.assertEqual(run("sh", "-n", path).returncode, 0, script)
        with open(os.path.join(ctl, "postinst")) as f:
            postinst = f.read()
        self.assertIn("systemd-sysusers cskit.conf", postinst)
        self.assertIn("install -d -o cskit -g cskit -m 0750 /var/lib/cskit", postinst)
        self.assertIn(f"conf=/{CONF}\n", postinst)
        self.assertIn("deb-systemd-helper --quiet was-enabled cskit.service", postinst)
        self.assertRegex(info, r"Depends: adduser, init-system-helpers \(>= [^)]+\), procps")

    def test_the_binary_runs_from_the_scratch_root(self):
        r = run(os.path.join(self.root, BIN_IN), "--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^cskit \d+\.\d+\.\d+ \(protocol \d+\)")

    def unit_root(self):
        """The scratch root with the host's targets and slices, and /bin/kill (ExecReload), which the
        unit refers to."""
        units = os.path.join(self.root, os.path.dirname(UNIT))
        for f in glob.glob("/lib/systemd/system/*.target") + glob.glob("/lib/systemd/system/*.slice"):
            dest = os.path.join(units, os.path.basename(f))
            if not os.path.exists(dest):
                shutil.copy(f, dest, follow_symlinks=True)
        kill = os.path.join(self.root, "bin", "kill")
        if not os.path.exists(kill):
            os.makedirs(os.path.dirname(kill), exist_ok=True)
            shutil.copy("/bin/kill", kill, follow_symlinks=True)
        return self.root

    def test_the_unit_verifies_and_is_hardened(self):
        with open(os.path.join(self.root, UNIT)) as f:
            unit = f.read()
        self.assertIn(f"ExecStart={PREFIX}/bin/cskit serve --config {ETC}/cskit/cskit.toml\n", unit)
        for line in ("Type=notify", "User=cskit", "StateDirectory=cskit", "ProtectSystem=strict", "ProtectHome=yes",
                     "PrivateTmp=yes", "NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                     "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID"):
            self.assertIn(line + "\n", unit)
        root = self.unit_root()
        r = run("systemd-analyze", "verify", "--man=no", f"--root={root}", "/" + UNIT)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = run("systemd-analyze", "security", "--offline=yes", f"--root={root}", "/" + UNIT)
        m = re.search(r"Overall exposure level for cskit\.service: ([\d.]+) (\w+)", r.stdout)
        self.assertIsNotNone(m, r.stdout + r.stderr)
        self.assertLessEqual(float(m.group(1)), 2.0, r.stdout)  # docs/packaging.md quotes it

    def test_the_man_pages_render(self):
        for page, heading in ((MAN1, "CSKIT(1)"), (MAN5, "CSKIT.TOML(5)")):
            with self.subTest(page=page):
                path = os.path.join(self.root, page)
                r = run("man", "-l", path, env=dict(os.environ, MANWIDTH="100", LC_ALL="C"))
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn(heading, r.stdout)
                with gzip.open(path, "rt") as f:
                    source = f.read()
                warn = run("groff", "-man", "-ww", "-z", input=source)
                self.assertEqual(warn.stderr, "", page)
        man1 = run("man", "-l", os.path.join(self.root, MAN1), env=dict(os.environ, MANWIDTH="200", LC_ALL="C")).stdout
        # Made from the same text as `cskit help`: every command and option is there.
        for text in ("cskit put [-r] [-p] [-a] LOCAL... HOST:[REMOTE]", "--bwlimit RATE", "--irc-listen",
                     "EXIT STATUS", "14  already exists", "cskit completion bash|zsh|fish"):
            self.assertIn(text, man1)
        man5 = run("man", "-l", os.path.join(self.root, MAN5), env=dict(os.environ, MANWIDTH="200", LC_ALL="C")).stdout
        self.assertIn('history_store = "sqlite"', man5)

    def test_the_completions_load_and_complete(self):
        script = os.path.join(self.root, BASH)
        probe = (f"source {script}\n"
                 "COMP_WORDS=(cskit pu); COMP_CWORD=1; _cskit; echo \"${COMPREPLY[*]}\"\n"
                 "COMP_WORDS=(cskit get --no-f); COMP_CWORD=2; _cskit; echo \"${COMPREPLY[*]}\"\n"
                 "COMP_WORDS=(cskit help ex); COMP_CWORD=2; _cskit; echo \"${COMPREPLY[*]}\"\n"
                 "complete -p cskit\n")
        r = run("bash", "--norc", "-c", probe)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[:3], ["put", "--no-fsync", "exec"])
        self.assertIn("-F _cskit cskit", r.stdout)
        r = run("zsh", "-n", os.path.join(self.root, ZSH))
        self.assertEqual(r.returncode, 0, r.stderr)
        fish = os.path.join(self.root, FISH)
        r = run("fish", "--no-execute", fish)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run("fish", "--no-config", "-c", f"source {fish}; complete -C 'cskit ver'")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("version"), r.stdout)

    def test_the_packaged_config_loads(self):
        state = os.path.join(self.tmp, "state")
        for config in (os.path.join(self.root, CONF), None):
            with self.subTest(config=config):
                if config is None:
                    # Every key of `cskit help config`, as it is printed, is one the server takes.
                    config = os.path.join(self.tmp, "reference.toml")
                    with open(config, "w") as f:
                        f.write(run(BIN, "help", "config").stdout)
                r = run(BIN, "serve", "--config", config, "--state-dir", state, "--root",
                        os.path.join(self.tmp, "share"), "--print-fingerprint", env=dict(os.environ, HOME=self.tmp))
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertRegex(r.stdout, r"^SHA256:")


class MakeInstall(unittest.TestCase):
    def test_destdir_install_places_every_file(self):
        dest = tempfile.mkdtemp(prefix="cskit-install-")
        self.addCleanup(shutil.rmtree, dest, ignore_errors=True)
        r = run("cmake", "--install", BUILD, env=dict(os.environ, DESTDIR=dest))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for path in EXPECTED:
            self.assertTrue(os.path.isfile(os.path.join(dest, path)), path)
        r = run(os.path.join(dest, BIN_IN), "version")
        self.assertEqual(r.returncode, 0, r.stderr)
        conf = os.path.join(dest, CONF)
        self.assertEqual(os.stat(conf).st_mode & 0o777, 0o640)
        # Installing again never replaces the admin's config.
        with open(conf, "a") as f:
            f.write("\n[[users]]\nname = \"kept\"\ntoken = \"kept-token-0123456789\"\npermissions = [\"chat\"]\n")
        with open(conf) as f:
            edited = f.read()
        r = run("cmake", "--install", BUILD, env=dict(os.environ, DESTDIR=dest))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("Keeping", r.stdout)
        with open(conf) as f:
            self.assertEqual(f.read(), edited)


if __name__ == "__main__":
    unittest.main()
