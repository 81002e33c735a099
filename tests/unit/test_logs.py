import json
import logging

from shared.logs import JsonFormatter, redact


def test_emails_and_phone_numbers_are_masked_but_ips_and_dates_are_not():
    assert redact("ana.perez+news@example.co.uk wrote") == "[email] wrote"
    assert redact("call +34 600 123 456 or 555.123.4567") == "call [phone] or [phone]"
    assert redact("+1-202-555-0175") == "[phone]"
    assert redact("from 127.0.0.1 on 2026-11-26") == "from 127.0.0.1 on 2026-11-26"


def test_json_log_lines_mask_extra_fields_too():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "lead for %s", ("bo@example.com",), None)
    record.phone = "+34 600 123 456"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "lead for [email]"
    assert entry["phone"] == "[phone]"


def test_addresses_inside_other_text_are_masked_whole():
    assert redact("x<ana@example.com>,bo_1@ex.org;" + "a" * 5000) == "x<[email]>,[email];" + "a" * 5000
    assert redact("id=" + "a" * 5000 + "@example.com") == "id=[email]"
