"""The shell scripts the user-data carries go without their comment lines, and stay the
same programs: same line numbers, same bash syntax, directives kept."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agentspaces.vmconfig import templates

SCRIPTS = ["bootstrap.sh", "bootstrap-debian-13.sh", "firewall.sh", "cloudcli-register.sh",
           "agentspaces-claude.sh"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_comments_go_and_the_program_stays(name: str, tmp_path: Path) -> None:
    source = templates.read_template(name)
    shipped = templates.read_shell_script(name)
    assert shipped.count("\n") == source.count("\n")  # bash's line numbers still match
    assert shipped.startswith("#!/bin/bash\n")
    assert len(shipped) < len(source)
    for original, kept in zip(source.splitlines(), shipped.splitlines(), strict=True):
        if original.lstrip().startswith("#") and not original.startswith("#!"):
            assert kept == ("" if "# shellcheck " not in original else original)
        else:
            assert kept == original  # code, and comments after code, untouched
    script = tmp_path / name
    script.write_text(shipped)
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                             check=False)
    assert checked.returncode == 0, checked.stderr


def test_a_here_document_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "#!/bin/bash\ncat <<EOF\n# data, not a comment\nEOF\n"
    monkeypatch.setattr(templates, "read_template", lambda name: text)
    with pytest.raises(templates.TemplateError, match="here-document"):
        templates.read_shell_script("x.sh")
