"""`greenflow vault query` and ``GET /vault/states`` against running node processes after
a trade: the buyer's vault lists the paper it bought (slow: four node processes)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from greenflow.testing.node_processes import ProcessNetwork

APP = "samples.trade"


@pytest.mark.slow
def test_vault_query_lists_the_traded_paper_on_a_running_node(tmp_path):
    from greenflow.samples._trade_processes import _run, _run_many

    with ProcessNetwork(tmp_path / "procs", ["Bank", "Seller", "Buyer"], notary="Notary",
                        apps=[APP]) as pn:
        pn.start_all(wait=60)
        bank, seller, buyer = pn.client("Bank"), pn.client("Seller"), pn.client("Buyer")
        _run(buyer, "SetPriceLimitFlow", {"amount": 1_200})
        _run_many(bank, "IssueCashFlow", {"amount": 1_500, "owner": "Buyer", "notary": "Notary"}, 1)
        _run(seller, "IssuePaperFlow", {"reference": "CP-7", "face_value": 1_000, "notary": "Notary"})
        _run(seller, "SellPaperFlow", {"buyer": "Buyer", "price": 1_000, "reference": "CP-7"})
        assert pn.running("Buyer")
        out = subprocess.run([sys.executable, "-m", "greenflow.cli.main", "vault", "query",
                              "--node", pn.dir("Buyer"), "--type", "samples.trade:CommercialPaper",
                              "--json"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["total"] == 1 and doc["states"][0]["state"]["reference"] == "CP-7"
        assert doc["states"][0]["state"]["owner"] == "Buyer"
        text = subprocess.run([sys.executable, "-m", "greenflow.cli.main", "vault", "query",
                               "--node", pn.dir("Seller"), "--type", "samples.trade:CommercialPaper",
                               "--status", "consumed"], capture_output=True, text=True, timeout=60)
        assert text.returncode == 0 and "CP-7" in text.stdout and "consumed" in text.stdout
        _, page = buyer.request("GET", "/vault/states?type=samples.trade:CommercialPaper")
        assert [s["state"]["reference"] for s in page["states"]] == ["CP-7"]
        _, cash = buyer.request("GET", "/vault/states?type=greenflow.ledger.finance:Cash&status=all")
        assert cash["total"] == 2  # the coin it paid with (consumed) and its change
