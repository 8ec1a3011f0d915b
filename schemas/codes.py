"""Register (attendance) codes and their statistical meaning: the one table every other module reads.

Sources (see ../shared/domain/README.md section 1):
- Codes and legal meanings: The School Attendance (Pupil Registration) (England) Regulations 2024, reg 10 and
  Tables 1-2, https://www.legislation.gov.uk/uksi/2024/208/regulation/10/made, in force 19 August 2024.
- Statistical categories: DfE data dictionary, dfe-analytical-services/dfe-published-data-qa
  data/data-dictionary.csv@bcc7ca5 ("Pupil attendance"), and DfE's own pipeline
  dfe-analytical-services/attendance-data-dashboard R/prerun_utils.R@8f4979c:
  present = / + \\ + L; AEA = B+J+P+V+W+K; authorised = I+M+R+S+T+H+E+C+C1+J1+C2; unauthorised = G+U+O+N;
  possible = attendance + absence (D, Q, X, Y1-Y7, Z, # are not possible sessions); late = L + U.
- Legacy codes H, J (and the older F) were removed on 19 August 2024; DfE still carries columns for them.
  F (agreed extended family holiday) is counted as authorised here because DfE's file carries it as
  `reason_f_legacy_family_holiday` beside the authorised reasons [I: DfE's arithmetic above does not list F;
  treated as authorised absence, matching the 2009 DCSF guidance where F was an authorised code].
- X: non-compulsory-school-age pupil not required to attend; not a possible session [I: absent from DfE outputs].
- "-" (no mark entered) is the MIS default; it is not a statistical mark, so it is valid only as a warning.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

#: Day the 2024 regulations (and the new code set) came into force.
CODE_SET_2024_FROM = dt.date(2024, 8, 19)


class Category(StrEnum):
    PRESENT = "present"
    AEA = "approved_educational_activity"
    AUTHORISED = "authorised"
    UNAUTHORISED = "unauthorised"
    NOT_POSSIBLE = "not_possible"  # management codes: not counted in possible sessions
    NO_MARK = "no_mark"


@dataclass(frozen=True, slots=True)
class RegisterCode:
    code: str
    meaning: str
    category: Category
    late: bool = False
    #: DfE open-data column for this code's session count (None where DfE publishes none).
    dfe_column: str | None = None
    #: Short name used in DfE's rate columns (e.g. ``illness_perc``), where DfE publishes a rate.
    dfe_rate_column: str | None = None
    valid_from: dt.date | None = None  # first date the code may be used
    valid_to: dt.date | None = None  # last date the code may be used (legacy codes)

    @property
    def possible(self) -> bool:
        return self.category in (Category.PRESENT, Category.AEA, Category.AUTHORISED, Category.UNAUTHORISED)

    def valid_on(self, day: dt.date) -> bool:
        if self.valid_from is not None and day < self.valid_from:
            return False
        return not (self.valid_to is not None and day > self.valid_to)


_LEGACY_TO = CODE_SET_2024_FROM - dt.timedelta(days=1)
_NEW_FROM = CODE_SET_2024_FROM

REGISTER_CODES: tuple[RegisterCode, ...] = (
    RegisterCode("/", "Present at morning registration", Category.PRESENT, dfe_column="reason_present_am"),
    RegisterCode("\\", "Present at afternoon registration", Category.PRESENT, dfe_column="reason_present_pm"),
    RegisterCode("L", "Late, arrived before the register closed", Category.PRESENT, late=True,
                 dfe_column="reason_l_present_late_before_registers_closed"),
    RegisterCode("K", "Attending education provision arranged by the local authority", Category.AEA,
                 dfe_column="reason_k_aea_education_arranged_by_la", valid_from=_NEW_FROM),
    RegisterCode("V", "Attending an educational visit or trip", Category.AEA,
                 dfe_column="reason_v_aea_educational_visit_trip"),
    RegisterCode("P", "Participating in a supervised sporting activity", Category.AEA,
                 dfe_column="reason_p_aea_approved_sporting_activity"),
    RegisterCode("W", "Attending work experience", Category.AEA, dfe_column="reason_w_aea_work_experience"),
    RegisterCode("B", "Attending any other approved educational activity", Category.AEA,
                 dfe_column="reason_b_aea_education_off_site"),
    RegisterCode("J", "Interview (legacy, before 19 August 2024)", Category.AEA,
                 dfe_column="reason_j_aea_interview", valid_to=_LEGACY_TO),
    RegisterCode("C1", "Leave: regulated performance or employment abroad", Category.AUTHORISED,
                 dfe_column="reason_c1_authorised_regulated_performance", dfe_rate_column="auth_performance_perc",
                 valid_from=_NEW_FROM),
    RegisterCode("M", "Leave: medical or dental appointment", Category.AUTHORISED,
                 dfe_column="reason_m_authorised_medical_dental", dfe_rate_column="appointments_perc"),
    RegisterCode("J1", "Leave: interview", Category.AUTHORISED, dfe_column="reason_j1_authorised_interview",
                 dfe_rate_column="auth_interview_perc", valid_from=_NEW_FROM),
    RegisterCode("S", "Leave: study leave", Category.AUTHORISED, dfe_column="reason_s_authorised_study_leave",
                 dfe_rate_column="auth_study_perc"),
    RegisterCode("C2", "Leave: temporary reduced timetable", Category.AUTHORISED,
                 dfe_column="reason_c2_authorised_temp_reduced_timetable", dfe_rate_column="auth_part_time_perc",
                 valid_from=_NEW_FROM),
    RegisterCode("C", "Leave: exceptional circumstances", Category.AUTHORISED,
                 dfe_column="reason_c_authorised_other", dfe_rate_column="auth_other_perc"),
    RegisterCode("T", "Mobile child (traveller) travelling for occupation", Category.AUTHORISED,
                 dfe_column="reason_t_authorised_mobile_child", dfe_rate_column="auth_mob_perc"),
    RegisterCode("R", "Religious observance", Category.AUTHORISED,
                 dfe_column="reason_r_authorised_religious_observance", dfe_rate_column="auth_religious_perc"),
    RegisterCode("I", "Illness (not medical or dental appointment)", Category.AUTHORISED,
                 dfe_column="reason_i_authorised_illness", dfe_rate_column="illness_perc"),
    RegisterCode("E", "Suspended or excluded, no alternative provision", Category.AUTHORISED,
                 dfe_column="reason_e_authorised_excluded", dfe_rate_column="auth_excluded_perc"),
    RegisterCode("H", "Holiday authorised by the school (legacy, before 19 August 2024)", Category.AUTHORISED,
                 dfe_column="reason_h_authorised_holiday", valid_to=_LEGACY_TO),
    RegisterCode("F", "Agreed extended family holiday (legacy)", Category.AUTHORISED,
                 dfe_column="reason_f_legacy_family_holiday", valid_to=_LEGACY_TO),
    RegisterCode("G", "Holiday not granted by the school", Category.UNAUTHORISED,
                 dfe_column="reason_g_unauthorised_holiday", dfe_rate_column="unauth_hol_perc"),
    RegisterCode("U", "Arrived after the register closed", Category.UNAUTHORISED, late=True,
                 dfe_column="reason_u_unauthorised_late_after_registers_closed",
                 dfe_rate_column="unauth_late_registers_closed_perc"),
    RegisterCode("O", "Absent in other or unknown circumstances", Category.UNAUTHORISED,
                 dfe_column="reason_o_other_unauthorised", dfe_rate_column="unauth_oth_perc"),
    RegisterCode("N", "Reason for absence not yet established", Category.UNAUTHORISED,
                 dfe_column="reason_n_no_reason_yet", dfe_rate_column="unauth_not_yet_perc"),
    RegisterCode("D", "Dual registered, attending another school", Category.NOT_POSSIBLE,
                 dfe_column="reason_d_dual_registration"),
    RegisterCode("X", "Not required to attend: non-compulsory school age", Category.NOT_POSSIBLE),
    RegisterCode("Q", "Unable to attend: lack of access arrangements", Category.NOT_POSSIBLE,
                 dfe_column="reason_q_la_arrangements", valid_from=_NEW_FROM),
    RegisterCode("Y", "Exceptional circumstances (legacy, before 19 August 2024)", Category.NOT_POSSIBLE,
                 valid_to=_LEGACY_TO),
    RegisterCode("Y1", "Unable to attend: transport not available", Category.NOT_POSSIBLE,
                 dfe_column="reason_y1_transport_not_provided", valid_from=_NEW_FROM),
    RegisterCode("Y2", "Unable to attend: widespread disruption to travel", Category.NOT_POSSIBLE,
                 dfe_column="reason_y2_travel_disruption", valid_from=_NEW_FROM),
    RegisterCode("Y3", "Unable to attend: part of premises closed", Category.NOT_POSSIBLE,
                 dfe_column="reason_y3_premises_out_of_use", valid_from=_NEW_FROM),
    RegisterCode("Y4", "Unable to attend: whole school site unexpectedly closed", Category.NOT_POSSIBLE,
                 dfe_column="reason_y4_closed_session_cancelled", valid_from=_NEW_FROM),
    RegisterCode("Y5", "Unable to attend: in criminal justice detention", Category.NOT_POSSIBLE,
                 dfe_column="reason_y5_detention_sentence", valid_from=_NEW_FROM),
    RegisterCode("Y6", "Unable to attend: public health guidance or law", Category.NOT_POSSIBLE,
                 dfe_column="reason_y6_prohibited_infection_disease", valid_from=_NEW_FROM),
    RegisterCode("Y7", "Unable to attend: any other unavoidable cause", Category.NOT_POSSIBLE,
                 dfe_column="reason_y7_unavoidable_cause", valid_from=_NEW_FROM),
    RegisterCode("Z", "Prospective pupil not on admission register", Category.NOT_POSSIBLE,
                 dfe_column="reason_z_not_attending_not_on_roll"),
    RegisterCode("#", "Planned whole or partial school closure", Category.NOT_POSSIBLE,
                 dfe_column="reason_not_attending_planned_closed"),
    RegisterCode("-", "No mark entered", Category.NO_MARK),
)

CODES_BY_MARK: dict[str, RegisterCode] = {c.code: c for c in REGISTER_CODES}

#: Codes in force from 19 August 2024 (excludes legacy H, J, F, Y).
CODES_2024: frozenset[str] = frozenset(c.code for c in REGISTER_CODES if c.valid_to is None)
#: Codes allowed for dates before 19 August 2024 (excludes the codes new in 2024).
CODES_LEGACY: frozenset[str] = frozenset(c.code for c in REGISTER_CODES if c.valid_from is None)


def codes_in_category(category: Category) -> frozenset[str]:
    return frozenset(c.code for c in REGISTER_CODES if c.category == category)


LATE_CODES: frozenset[str] = frozenset(c.code for c in REGISTER_CODES if c.late)
POSSIBLE_CODES: frozenset[str] = frozenset(c.code for c in REGISTER_CODES if c.possible)
