"""An adapter folder's tunesmith.json is read in one place: a missing one is no record (plain peft folders),
a broken one is the same one-line error, naming the file, in every command that reads it."""

from __future__ import annotations

import pytest

from tests.export.helpers import make_adapter
from tunesmith.adapter_record import read_record
from tunesmith.cli import main
from tunesmith.errors import UserError
from tunesmith.export.merge import adapter_base
from tunesmith.methods.registry import folder_method
from tunesmith.serve.adapters import inspect_adapter


@pytest.fixture
def adapter(tiny_model_dir, tmp_path):
    return make_adapter(tiny_model_dir, tmp_path / "adapter")


def test_the_record_and_its_absence(adapter, tiny_model_dir):
    assert read_record(adapter) == {"base": str(tiny_model_dir), "method": "lora"}
    assert adapter_base(adapter) == str(tiny_model_dir) and folder_method(adapter) == "lora"
    (adapter / "tunesmith.json").unlink()
    # A folder plain peft saved: peft's own record of the base, no method.
    assert read_record(adapter) is None and folder_method(adapter) is None
    assert adapter_base(adapter) == str(tiny_model_dir)


@pytest.mark.parametrize("content, says", [('{"base": ', "not valid JSON"), ('["lora"]', "not a JSON object")])
def test_a_broken_record_is_one_error_everywhere(adapter, tmp_path, capsys, content, says):
    record = adapter / "tunesmith.json"
    record.write_text(content)
    for reader in (read_record, lambda folder: inspect_adapter("a", folder), adapter_base, folder_method):
        with pytest.raises(UserError, match=says) as err:
            reader(adapter)
        assert str(record) in str(err.value)
    out = tmp_path / "merged"
    with pytest.raises(SystemExit) as exit_:
        main(["merge", "--adapter", str(adapter), "-o", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and str(record) in err and says in err and "Traceback" not in err
    assert not out.exists()
