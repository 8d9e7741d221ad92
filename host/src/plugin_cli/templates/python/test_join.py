"""The plugin's functions run natively (`pytest`), through the SDK's harness."""

from weir.testing import JoinHarness

from plugin import enrich


def test_a_paid_seat_and_an_unpaid_one():
    harness = JoinHarness(enrich)
    paid = harness.pair({"OrderId": "o1", "SeatId": "A1"}, {"OrderId": "o1", "Amount": 40.0})
    assert paid.json("rows") == [{"OrderId": "o1", "SeatId": "A1", "Paid": True, "Amount": 40.0}]
    alone = harness.pair({"OrderId": "o2", "SeatId": "B7"}, None)
    assert alone.json("rows") == [{"OrderId": "o2", "SeatId": "B7", "Paid": False}]
