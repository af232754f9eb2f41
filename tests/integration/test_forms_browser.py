"""`tidelake demo stock` in headless Chromium: a wrong password is refused; an operator logs
in on the dashboard, records a sale (a double click and a third click: it lands once), sees
the product's stock drop on the dashboard and logs out; a viewer then sees no form."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from browser import Browser, Demo, free_port, wait_for

from tidelake.config import load
from tidelake.projects import demo_folder
from tidelake.serve.users import Entries, Users

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
LOWEST = ".st-key-panel-0 [data-testid=stVegaLiteChart] .mark-rect.role-mark path"
SIDEBAR = "[data-testid=stSidebar]"


def bars(browser: Browser) -> dict[str, int]:
    """The 'Lowest stock' chart as drawn: product -> stock, from each bar's label."""
    labels = browser.js(
        f"Array.from(document.querySelectorAll({json.dumps(LOWEST)}))"
        ".map(p => p.getAttribute('aria-label'))"
    )
    out = {}
    for label in labels or []:
        fields = dict(part.split(": ", 1) for part in label.split("; "))
        out[fields["product_id"]] = int(fields["stock"].replace(",", ""))
    return out


def type_into(browser: Browser, selector: str, text: str) -> None:
    """Type ``text`` into the element ``selector`` once it shows (a rerun may redraw it)."""
    focus = f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
    focus += " if (!e) return false; e.focus(); return true; })()"
    wait_for(lambda: browser.js(focus), 30, selector)
    browser.send("Input.insertText", text=text)


def choose(browser: Browser, option: str) -> None:
    """Pick ``option`` in the first selectbox: a real click opens it, typing filters it."""
    box = browser.js(
        "(() => { const i = document.querySelector('[data-testid=stSelectbox] input');"
        " i.scrollIntoView({block: 'center', behavior: 'instant'});"
        " const r = i.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    for kind in ("mousePressed", "mouseReleased"):
        browser.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                     clickCount=1)  # fmt: skip
    browser.send("Input.insertText", text=option)
    pick = (
        "(() => { const o = Array.from(document.querySelectorAll('[role=option]'))"
        f".find(o => o.innerText.trim() === {json.dumps(option)}); if (!o) return false;"
        " o.click(); return true; })()"
    )
    wait_for(lambda: browser.js(pick), 10, f"option {option}")


def settled(browser: Browser) -> bool:
    """The script run is over: no Stop button, no element left from the run before."""
    return bool(
        browser.js(
            "!Array.from(document.querySelectorAll('button')).some(b => b.innerText === 'Stop')"
            " && document.querySelectorAll('[data-stale=true]').length === 0"
        )
    )


def click(browser: Browser, label: str, times: int = 1) -> None:
    """Click the button whose text is ``label`` once the page settled (``times`` in a row)."""
    wait_for(lambda: settled(browser), 30, "the page to settle")
    script = (
        f"(() => {{ const b = Array.from(document.querySelectorAll('button'))"
        f".find(b => b.innerText.trim() === {json.dumps(label)}); if (!b) return false;"
        f" for (let i = 0; i < {times}; i++) b.click(); return true; }})()"
    )
    buttons = "Array.from(document.querySelectorAll('button')).map(b => b.innerText)"
    wait_for(lambda: browser.js(script), 30, f"button {label!r} ({browser.js(buttons)})")


def page_text(browser: Browser) -> str:
    return str(browser.js("document.body.innerText"))


def see(browser: Browser, text: str, timeout: float = 30) -> None:
    """Wait until the page shows ``text``; the failure shows what the page said instead."""
    try:
        wait_for(lambda: text in page_text(browser), timeout, repr(text))
    except AssertionError as e:
        raise AssertionError(f"{e}; the page says:\n{page_text(browser)}") from None


def log_in(browser: Browser, user: str, password: str) -> None:
    wait_for(
        lambda: settled(browser) and browser.text(f"{SIDEBAR} input[type=password]") is not None,
        30,
        "the login form",
    )
    type_into(browser, f"{SIDEBAR} input[type=text]", user)
    type_into(browser, f"{SIDEBAR} input[type=password]", password)
    click(browser, "Log in")


def test_operator_records_a_sale_and_sees_the_stock_drop(tmp_path: Path, browser: Browser) -> None:
    folder = tmp_path / "stock"
    pipeline = load(demo_folder("stock", folder))
    Users(pipeline).add("olga", "operator", PASSWORD)
    Users(pipeline).add("vera", "viewer", PASSWORD)
    api, dashboard = free_port(), free_port()
    demo = Demo("stock", folder, api, dashboard, env={"STOCK_LIMIT": "0"})  # only the forms
    try:
        wait_for(lambda: demo.alive() and "operators    olga" in demo.output, 60, "the banner")
        demo.show(browser)
        before = wait_for(lambda: len(bars(browser)) == 20 and bars(browser), 120, "the chart")
        product, stock = min(before.items(), key=lambda kv: (kv[1], kv[0]))

        log_in(browser, "olga", "wrong horse battery")
        see(browser, "Wrong user name or password.")
        assert "Logged in as" not in page_text(browser)

        log_in(browser, "olga", PASSWORD)
        see(browser, "Logged in as olga (operator)")
        wait_for(lambda: browser.text("[data-testid=stSelectbox]"), 30, "the sale form")
        choose(browser, product)
        type_into(browser, "[data-testid=stNumberInput] input", "3")
        click(browser, "Submit", times=2)  # a double click
        see(browser, "recorded by olga")
        click(browser, "Submit")  # and the same entry once more
        see(browser, "was already recorded")

        wait_for(lambda: bars(browser).get(product) == stock - 3, 30, "the stock to drop by 3")
        db = folder / ".tidelake" / "stock.db"
        with sqlite3.connect(db) as con:
            rows = con.execute(
                "SELECT product_id, op, quantity, delta, operator FROM operations "
                "WHERE op_id LIKE 'FORM-%'"
            ).fetchall()
        assert rows == [(product, "sale", 3, -3, "olga")]
        (entry,) = Entries(pipeline).list("sale")
        assert entry.user == "olga" and entry.status == "sent"

        click(browser, "Log out")
        see(browser, "Log in (in the sidebar)")
        assert "Record a sale" not in page_text(browser)

        log_in(browser, "vera", PASSWORD)
        see(browser, "No form for role viewer.")
        assert "Record a sale" not in page_text(browser) and "Logged in as vera" in page_text(
            browser
        )
    finally:
        assert demo.interrupt() == 0, demo.output
