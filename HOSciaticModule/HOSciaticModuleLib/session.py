"""The results of the steps run in one session of the panel, kept for its export and
its jumps: each step drops the results that stood on what it replaced, and nodes the
reader deleted take their results with them."""

from __future__ import annotations


class SessionResults:
    """The latest HO segmentation, nerve per side and contact per side of a session."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Drop everything (the scene that held the results is closing)."""
        self.ossification = None
        self.nerves: dict = {}
        self.contacts: dict = {}

    def segmented(self, outputs) -> None:
        """A new HO segmentation: contact measured on the segments before is not that of these."""
        self.ossification = outputs
        self.contacts = {}

    def traced(self, side: str, outputs) -> None:
        """A new nerve on ``side``: its contact measured before was that of another nerve,
        and the other side's area against it, and its diameter beside the other side's
        stations, were measured against that nerve."""
        self.nerves[side] = outputs
        self.contacts.pop(side, None)
        for contact in self.contacts.values():
            contact.contact.contralateral_area_ratio = None
            contact.contact.other_side_diameter_mm = None

    def measured(self, side: str, outputs) -> None:
        """A contact measured: the other side's figures against this nerve are measured anew with it."""
        from .pipeline import refresh_other_side

        self.contacts[side] = outputs
        refresh_other_side(self.contacts, outputs)

    def contact_of(self, side: str):
        return self.contacts.get(side)

    def current(self, scene) -> tuple:
        """(ossification, [(side, nerve)], [(side, contact)], warnings) of the results
        whose nodes are still in ``scene``; a warning for each traced nerve whose
        contact is missing beside an HO segmentation."""
        oss = self.ossification
        if oss is not None and oss.segmentation_node.GetScene() is not scene:
            oss = None
        nerves = sorted((side, nerve) for side, nerve in self.nerves.items()
                        if nerve.centreline_node.GetScene() is scene)
        traced = {side for side, _ in nerves}
        contacts = sorted((side, contact) for side, contact in self.contacts.items()
                          if oss is not None and side in traced)
        missing = sorted(traced - {side for side, _ in contacts}) if oss is not None else []
        warnings = [f"The {side} nerve's contact with HO is not in these results: it was not computed again after "
                    "the last HO segmentation or tracing. Press Compute, then export again." for side in missing]
        return oss, nerves, contacts, warnings
