"""The web page in a real browser: Debian's Chromium, headless, driven by
Selenium through chromedriver. Logs in, lists, uploads a file (in pieces),
a folder and a dropped file, downloads and compares the bytes, makes a
folder, renames, deletes, and chats with a `cskit chat` client. A
screenshot of each view is kept as a test artifact ($CSKIT_ARTIFACTS, by
default build/<preset>/test-artifacts).

Runs with Debian's /usr/bin/python3, which has python3-selenium (CTest
starts it so)."""
import base64
import hashlib
import os
import shutil
import tempfile
import time
import unittest

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from harness import TOKEN, Server
from test_chat import Client as ChatClient

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CONF = f"""
[[users]]
name = "admin"
token = "{TOKEN}"
permissions = ["files-read", "files-write", "chat"]
"""


def spki_pin(fingerprint):
    """Chromium's --ignore-certificate-errors-spki-list form of the server's key (base64 SHA-256,
    padded): this one key is trusted, no other certificate error is ignored."""
    b64 = fingerprint.split(":", 1)[1]
    return b64 + "=" * (-len(b64) % 4)


class Browser(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(config_text=CONF)
        cls.tmp = tempfile.mkdtemp(prefix="cskit-browser-")
        cls.downloads = os.path.join(cls.tmp, "downloads")
        os.makedirs(cls.downloads)
        cls.artifacts = os.environ.get("CSKIT_ARTIFACTS") or os.path.join(cls.tmp, "artifacts")
        os.makedirs(cls.artifacts, exist_ok=True)
        with open(os.path.join(cls.srv.share, "readme.txt"), "w") as f:
            f.write("welcome to the share\n")
        o = webdriver.ChromeOptions()
        o.binary_location = CHROMIUM
        for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1280,900",
                     f"--user-data-dir={os.path.join(cls.tmp, 'profile')}",
                     f"--ignore-certificate-errors-spki-list={spki_pin(cls.srv.fingerprint)}"]:
            o.add_argument(flag)
        o.add_experimental_option("prefs", {"download.default_directory": cls.downloads,
                                            "download.prompt_for_download": False})
        cls.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)
        cls.driver.set_page_load_timeout(30)
        cls.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": cls.downloads})
        cls.base = f"https://127.0.0.1:{cls.srv.port}/"

    @classmethod
    def tearDownClass(cls):
        cls.driver.quit()
        cls.srv.stop()
        cls.srv.cleanup()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # ------------------------------------------------------------ helpers

    def wait(self, condition, timeout=20):
        return WebDriverWait(self.driver, timeout).until(condition)

    def by_id(self, id_):
        return self.driver.find_element(By.ID, id_)

    def shot(self, name):
        self.driver.save_screenshot(os.path.join(self.artifacts, f"browser-{name}.png"))

    def entry_names(self):
        # (read in one step: the listing is redrawn while uploads finish)
        return self.driver.execute_script(
            "return [...document.querySelectorAll('#entries tr td:first-child > *')].map(e => e.textContent)")

    def wait_entry(self, name, present=True):
        try:
            self.wait(lambda d: (name in self.entry_names()) == present)
        except TimeoutException:
            self.shot("failed")
            self.fail(f"{name!r} {'never appeared' if present else 'never went'}: {self.entry_names()}; "
                      f"error: {self.by_id('files-error').text!r}")

    def row_button(self, name, label):
        return self.wait(EC.element_to_be_clickable(
            (By.XPATH, f"//tbody[@id='entries']/tr[td[1]/*[text()='{name}']]//button[text()='{label}']")))

    def pick(self, input_id, path):
        field = self.by_id(input_id)
        self.driver.execute_script("arguments[0].hidden = false", field)  # (hidden behind its label)
        field.send_keys(path)

    def answer_prompt(self, text=None):
        alert = self.wait(EC.alert_is_present())
        if text is not None:
            alert.send_keys(text)
        alert.accept()

    def log_in(self):
        self.driver.get(self.base)
        self.wait(EC.visibility_of_element_located((By.ID, "login-form")))
        self.by_id("login-user").send_keys("admin")
        self.by_id("login-token").send_keys(TOKEN)
        self.by_id("login-button").click()
        self.wait(EC.visibility_of_element_located((By.ID, "app-view")))
        self.wait_entry("readme.txt")

    # ------------------------------------------------------------ the test

    def test_files_and_chat_in_the_page(self):
        # A wrong token first: the page says so, nothing else shows.
        self.driver.get(self.base)
        self.wait(EC.visibility_of_element_located((By.ID, "login-form")))
        self.by_id("login-user").send_keys("admin")
        self.by_id("login-token").send_keys("not-the-token-0123456789abcdef")
        self.by_id("login-button").click()
        self.wait(lambda d: "wrong token" in self.by_id("login-error").text)
        self.assertFalse(self.by_id("app-view").is_displayed())
        self.log_in()
        cookies = {c["name"]: c for c in self.driver.get_cookies()}
        session = cookies["__Host-cskit"]
        self.assertTrue(session["secure"] and session["httpOnly"])
        self.assertEqual(session["sameSite"], "Strict")
        self.assertIsNone(self.driver.execute_script("return document.cookie.match(/__Host-cskit/)"))

        # Upload a file larger than a piece (8 MiB): it goes in three pieces.
        big = os.urandom(20 * 1024 * 1024 + 3)
        src = os.path.join(self.tmp, "big.bin")
        with open(src, "wb") as f:
            f.write(big)
        self.pick("pick-files", src)
        self.wait_entry("big.bin")
        with open(os.path.join(self.srv.share, "big.bin"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(big).hexdigest())
        self.assertEqual(self.srv.stderr().count('op=put user=admin'), 1)  # one commit, not one per piece

        # A folder, with a subfolder.
        folder = os.path.join(self.tmp, "album")
        os.makedirs(os.path.join(folder, "2026"))
        files = {"a.txt": b"first\n", "2026/b.bin": os.urandom(70000)}
        for rel, data in files.items():
            with open(os.path.join(folder, rel), "wb") as f:
                f.write(data)
        self.pick("pick-folder", folder)
        self.wait_entry("album/")
        for rel, data in files.items():
            for _ in range(100):
                if os.path.exists(os.path.join(self.srv.share, "album", rel)):
                    break
                time.sleep(0.1)
            with open(os.path.join(self.srv.share, "album", rel), "rb") as f:
                self.assertEqual(f.read(), data, rel)

        # A file dropped on the drop zone.
        self.driver.execute_script("""
            const dt = new DataTransfer();
            dt.items.add(new File(["dropped bytes\\n"], "dropped.txt", {type: "text/plain"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        """)
        self.wait_entry("dropped.txt")
        with open(os.path.join(self.srv.share, "dropped.txt"), "rb") as f:
            self.assertEqual(f.read(), b"dropped bytes\n")
        self.shot("files")

        # Download: the link saves the file; the bytes are the share's.
        self.driver.find_element(By.LINK_TEXT, "big.bin").click()
        target = os.path.join(self.downloads, "big.bin")
        self.wait(lambda d: os.path.exists(target) and os.path.getsize(target) == len(big), timeout=60)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), big)

        # A new folder, a rename, a delete (of a folder and what is in it).
        self.by_id("mkdir").click()
        self.answer_prompt("made-here")
        self.wait_entry("made-here/")
        self.assertTrue(os.path.isdir(os.path.join(self.srv.share, "made-here")))
        self.row_button("dropped.txt", "rename").click()
        self.answer_prompt("renamed.txt")
        self.wait_entry("renamed.txt")
        self.assertFalse(os.path.exists(os.path.join(self.srv.share, "dropped.txt")))
        self.row_button("album/", "delete").click()
        self.answer_prompt()
        self.wait_entry("album/", present=False)
        self.assertFalse(os.path.exists(os.path.join(self.srv.share, "album")))

        # Into a folder and back by the path's links.
        self.driver.find_element(By.XPATH, "//button[text()='made-here/']").click()
        self.wait(lambda d: "made-here" in self.by_id("crumbs").text)
        self.driver.find_element(By.XPATH, "//nav[@id='crumbs']/button[text()='share']").click()
        self.wait_entry("readme.txt")

        self.chat_with_a_terminal_client()

        # Logging out ends the session: the page asks to log in again.
        self.by_id("logout").click()
        self.wait(EC.visibility_of_element_located((By.ID, "login-form")))
        self.driver.get(self.base)
        self.wait(EC.visibility_of_element_located((By.ID, "login-form")))

    def chat_with_a_terminal_client(self):
        self.by_id("tab-chat").click()
        nick = self.by_id("chat-nick")
        nick.clear()
        nick.send_keys("webuser")
        self.by_id("chat-connect").click()
        self.wait(lambda d: "connected as webuser" in self.by_id("chat-status").text)
        self.wait(lambda d: "joined #lobby" in self.by_id("chat-log").text)
        term = ChatClient(self.srv, "term", "--room", "lobby")
        self.addCleanup(term.close)
        term.wait_for(lambda e: e.get("type") == "joined" or e.get("event") == "joined" or "lobby" in str(e))
        self.wait(lambda d: "term joined #lobby" in self.by_id("chat-log").text)
        # From the page to the terminal.
        self.by_id("chat-text").send_keys("hello from the browser")
        self.by_id("chat-send").click()
        term.wait_for(lambda e: "hello from the browser" in str(e))
        # From the terminal to the page; an invisible right-to-left override is shown, not obeyed.
        term.say("hi from the terminal \u202eexe.txt")
        self.wait(lambda d: "hi from the terminal" in self.by_id("chat-log").text)
        log = self.by_id("chat-log").text
        self.assertIn("hi from the terminal \\u{202e}exe.txt", log)
        self.assertNotIn("\u202e", log)
        # A private message from the page.
        self.by_id("chat-text").send_keys("/msg term just for you")
        self.by_id("chat-send").click()
        e, _ = term.wait_for(lambda e: "just for you" in str(e))
        self.assertTrue(e.get("private"), e)
        # Nicknames are coloured (one of eight classes), never styled inline.
        colours = self.driver.execute_script(
            "return [...document.querySelectorAll('#chat-log .nick')].map(e => e.className)")
        self.assertTrue(all(c.startswith("nick n") for c in colours), colours)
        self.shot("chat")
        self.by_id("tab-files").click()


if __name__ == "__main__":
    unittest.main()
