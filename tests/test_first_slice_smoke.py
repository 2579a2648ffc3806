from tests.stack import Stack

CALLER = "+13125550142"


def test_missed_call_gets_one_text(stack: Stack) -> None:
    result = stack.call(CALLER, "no-answer")
    assert "error" not in result, result
    stack.drain()
    sent = stack.sent(CALLER)
    assert len(sent) == 1
    assert "Bright Spark Electric" in sent[0]["body"] and "STOP" in sent[0]["body"]
    lead = stack.lead(CALLER)
    assert lead is not None
    decision = [e for e in lead["timeline"] if e["type"] == "decision"]
    assert decision[0]["outcome"] == "text" and decision[0]["reason"] == "missed_no_answer"
    assert lead["status"] == "texted"
