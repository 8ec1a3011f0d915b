"""Calibration targets for the synthetic generator, with their sources, and a term simulation to check them.

Everything the generator draws is tuned to these published national figures (see docs/generator.md):

- Overall absence by phase, state-funded schools, 2025/26 year to date: primary 5.28%, secondary 8.49%,
  special 13.17%, all 6.88% of possible sessions; persistent absence 18.78% of enrolments
  [S: dfe-analytical-services/attendance-data-dashboard data/EES_ytd_data.csv@8f4979c, via the project's
  domain README section 2]. 2024/25 full year: 6.9% and 18.7%; autumn 2024/25: PA 19.2% [S: EES
  pupil-attendance-in-schools 2025-week-29 / 2025-week-4].
- Illness 3.31% of possible sessions (autumn 2024/25 census) [S: EES pupil-absence-in-schools-in-england
  2024-25-autumn-term]. The split authorised ~4.9 / unauthorised ~2.0 is the project brief's target for
  an overall rate of 6.9 [I].
- The shape of the reason mix (which reasons, in what proportion) follows DfE's own 2022/23 national
  "Total" row in the same repository (data/EES_ytd_data.csv@088699d: illness 4.37, appointments 0.29,
  authorised other 0.49, excluded 0.13, unauthorised holiday 0.38, other unauthorised 1.54, not yet 0.19,
  late after close 0.15; AEA 0.78 of which educational visits 0.42, off-site 0.26, sport 0.07, work
  experience 0.02, interview 0.01; L = 1.93% of present sessions; D = 0.23% of sessions), rescaled to the
  2024/25+ headline rates and the 2024 code set (C2, C1, J1, K) [I: the post-2024 split of "other
  authorised" among M, C, C2 is not published in the files we hold].
- Pupil characteristics: FSM eligibility ~25%, SEN support ~13%, EHC plan ~4.8% [S: EES
  school-pupils-and-their-characteristics / special-educational-needs-in-england, per the project brief];
  looked-after ~0.5% [I]. FSM pupils' absence rate about 1.9x others (10.0 vs 5.2 in autumn 2024/25)
  [S: EES pupil-attendance-in-schools 2025-week-7].
- Schools: 16,677 primary, 3,494 secondary, 1,121 special in the 2025/26 attendance denominators [S: YTD].
"""

from __future__ import annotations

from dataclasses import dataclass

#: Overall absence (authorised + unauthorised) as a share of possible sessions, by attendance phase.
PHASE_ABSENCE_RATE: dict[str, float] = {"Primary": 0.0528, "Secondary": 0.0849, "Special": 0.1317}
NATIONAL_ABSENCE_RATE = 0.069
PERSISTENT_ABSENCE_SHARE = 0.187  # share of pupils missing >= 10% of possible sessions over a term or year
PERSISTENT_ABSENCE_THRESHOLD = 0.10

#: Share of schools by phase (DfE 2025/26 denominators 16,677 / 3,494 / 1,121).
PHASE_SCHOOL_COUNTS: dict[str, int] = {"Primary": 16_677, "Secondary": 3_494, "Special": 1_121}

#: Absence reasons as % of possible sessions at the national rate of 6.9%. Authorised 4.90, unauthorised 2.00.
ABSENCE_REASON_RATES: dict[str, float] = {
    "I": 3.30,
    "M": 0.60,
    "C": 0.50,
    "C2": 0.20,
    "E": 0.15,
    "R": 0.06,
    "S": 0.04,
    "T": 0.02,
    "J1": 0.02,
    "C1": 0.01,
    "O": 1.30,
    "G": 0.35,
    "N": 0.20,
    "U": 0.15,
}
AUTHORISED_REASONS = ("I", "M", "C", "C2", "E", "R", "S", "T", "J1", "C1")
UNAUTHORISED_REASONS = ("O", "G", "N", "U")
AUTHORISED_RATE = sum(ABSENCE_REASON_RATES[c] for c in AUTHORISED_REASONS) / 100  # 0.049
UNAUTHORISED_RATE = sum(ABSENCE_REASON_RATES[c] for c in UNAUTHORISED_REASONS) / 100  # 0.020
ILLNESS_RATE = ABSENCE_REASON_RATES["I"] / 100

#: Late before the register closed (L) as a share of present sessions (DfE 2022/23: 1.93%).
LATE_SHARE_OF_PRESENT = 0.019
#: Approved educational activity as % of possible sessions (DfE 2022/23 total 0.78%).
AEA_RATES: dict[str, float] = {"V": 0.42, "B": 0.25, "P": 0.07, "W": 0.02, "K": 0.03}

#: Pupil characteristics (national shares).
FSM_SHARE = 0.25
SEN_SUPPORT_SHARE = 0.13
EHC_PLAN_SHARE = 0.048
LOOKED_AFTER_SHARE = 0.005

#: Roll sizes by phase: median pupils on roll (lognormal spread around it).
ROLL_MEDIAN: dict[str, int] = {"Primary": 250, "Secondary": 920, "Special": 100}


@dataclass(frozen=True)
class TermCheck:
    """What a simulated term looks like, compared with the targets."""

    pupils: int
    possible_sessions: int
    overall_absence_rate: float
    authorised_rate: float
    unauthorised_rate: float
    illness_rate: float
    persistent_absence_share: float
    severe_absence_share: float


def simulate_term(*, schools: int = 40, days: int = 65, seed: int = 7, start_year: int = 2025) -> TermCheck:
    """Run the generator's own roster and mark functions over a term (no files) and measure PA.

    A term is about 65 school days (130 sessions). Uses final codes (after amendments), as DfE publishes.
    """
    import datetime as dt

    import numpy as np

    from ingest import generate as g

    specs, _ = g.build_register(schools, seed=seed, academic_year=start_year)
    start = dt.date(start_year, 9, 8)
    school_days = g.school_days_from(start, days)
    possible_total = absent_total = auth_total = unauth_total = illness_total = 0
    pa = severe = pupils = 0
    code_possible = g.CODE_IS_POSSIBLE
    code_absent = g.CODE_IS_AUTHORISED | g.CODE_IS_UNAUTHORISED
    for spec in specs:
        roster = g.build_roster(spec, seed=seed, academic_year=start_year, as_of=start)
        possible = np.zeros(roster.n, dtype=np.int32)
        absent = np.zeros(roster.n, dtype=np.int32)
        for day in school_days:
            marks = g.day_marks(roster, day, seed=seed, amendment_rate=0.0)
            for final in marks.final:
                possible += code_possible[final]
                absent += code_absent[final]
                auth_total += int(g.CODE_IS_AUTHORISED[final].sum())
                unauth_total += int(g.CODE_IS_UNAUTHORISED[final].sum())
                illness_total += int((final == g.CODE_INDEX["I"]).sum())
        possible_total += int(possible.sum())
        absent_total += int(absent.sum())
        rate = np.divide(absent, possible, out=np.zeros(roster.n), where=possible > 0)
        pa += int((rate >= PERSISTENT_ABSENCE_THRESHOLD).sum())
        severe += int((rate >= 0.5).sum())
        pupils += roster.n
    return TermCheck(
        pupils=pupils,
        possible_sessions=possible_total,
        overall_absence_rate=absent_total / possible_total,
        authorised_rate=auth_total / possible_total,
        unauthorised_rate=unauth_total / possible_total,
        illness_rate=illness_total / possible_total,
        persistent_absence_share=pa / pupils,
        severe_absence_share=severe / pupils,
    )
