"""The book's bibliography style: plain author–year labels ("Alfarra et al., 2020") and
titles exactly as the BibTeX entry writes them (pybtex's styles lower-case every word after
the first). Loaded by `_config.yml` (`sphinx: local_extensions`) and selected there with
`bibtex_default_style: authoryear`."""

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.template import field, sentence


def _surname(person) -> str:
    return " ".join(str(part) for part in person.rich_prelast_names + person.rich_last_names)


class AuthorYearLabels(BaseLabelStyle):
    """``Surname, year``, ``Surname and Surname, year`` or ``Surname et al., year``."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = list(self._labels(entries))
        for i, label in enumerate(labels):  # Alfarra et al., 2021a and 2021b
            same = [j for j, other in enumerate(labels) if other == label]
            yield label + ("abcdefghij"[same.index(i)] if len(same) > 1 else "")

    def _labels(self, entries):
        for entry in entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            names = [_surname(p).strip("{}") for p in people]
            if not names:
                who = entry.fields.get("title", entry.key)[:20]
            elif len(names) == 1:
                who = names[0]
            elif len(names) == 2:
                who = f"{names[0]} and {names[1]}"
            else:
                who = f"{names[0]} et al."
            yield f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(UnsrtStyle):
    """pybtex's ``unsrt`` layout, sorted by author and year, with author–year labels and the
    entries' own title capitals."""

    default_label_style = AuthorYearLabels
    default_sorting_style = "author_year_title"

    def format_title(self, e, which_field, as_sentence=True):
        title = field(which_field)
        return sentence[title] if as_sentence else title


def setup(app):
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
