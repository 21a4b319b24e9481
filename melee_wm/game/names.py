"""Names of the ids the game stores: action states (Slippi's post-frame `state`) and internal character ids
(post-frame `character`), so a simulator or a picture can say "KneeBend" and "Marth" instead of 24 and 18.

Action states 0..340 are shared by every character and carry the game's own internal names (as its data files
and the community's frame-data sheets spell them); ids from 341 are character-specific and are named by number.
Character ids are the internal ones of `../shared/docs/peppi-api.md` ("Internal character ids").
"""

from __future__ import annotations

FIRST_CHARACTER_STATE = 341  # first character-specific action-state id

# Common action states in id order, from 0 (whitespace-separated so the table reads as the game's list).
_ACTION_TABLE = """
DeadDown DeadLeft DeadRight DeadUp DeadUpStar DeadUpStarIce DeadUpFall DeadUpFallHitCamera DeadUpFallHitCameraFlat
DeadUpFallIce DeadUpFallHitCameraIce Sleep Rebirth RebirthWait Wait WalkSlow WalkMiddle WalkFast Turn TurnRun Dash
Run RunDirect RunBrake KneeBend JumpF JumpB JumpAerialF JumpAerialB Fall FallF FallB FallAerial FallAerialF
FallAerialB FallSpecial FallSpecialF FallSpecialB DamageFall Squat SquatWait SquatRv Landing LandingFallSpecial
Attack11 Attack12 Attack13 Attack100Start Attack100Loop Attack100End AttackDash AttackS3Hi AttackS3HiS AttackS3S
AttackS3LwS AttackS3Lw AttackHi3 AttackLw3 AttackS4Hi AttackS4HiS AttackS4S AttackS4LwS AttackS4Lw AttackHi4
AttackLw4 AttackAirN AttackAirF AttackAirB AttackAirHi AttackAirLw LandingAirN LandingAirF LandingAirB LandingAirHi
LandingAirLw DamageHi1 DamageHi2 DamageHi3 DamageN1 DamageN2 DamageN3 DamageLw1 DamageLw2 DamageLw3 DamageAir1
DamageAir2 DamageAir3 DamageFlyHi DamageFlyN DamageFlyLw DamageFlyTop DamageFlyRoll LightGet HeavyGet LightThrowF
LightThrowB LightThrowHi LightThrowLw LightThrowDash LightThrowDrop LightThrowAirF LightThrowAirB LightThrowAirHi
LightThrowAirLw HeavyThrowF HeavyThrowB HeavyThrowHi HeavyThrowLw LightThrowF4 LightThrowB4 LightThrowHi4
LightThrowLw4 LightThrowAirF4 LightThrowAirB4 LightThrowAirHi4 LightThrowAirLw4 HeavyThrowF4 HeavyThrowB4
HeavyThrowHi4 HeavyThrowLw4 SwordSwing1 SwordSwing3 SwordSwing4 SwordSwingDash BatSwing1 BatSwing3 BatSwing4
BatSwingDash ParasolSwing1 ParasolSwing3 ParasolSwing4 ParasolSwingDash HarisenSwing1 HarisenSwing3 HarisenSwing4
HarisenSwingDash StarRodSwing1 StarRodSwing3 StarRodSwing4 StarRodSwingDash LipStickSwing1 LipStickSwing3
LipStickSwing4 LipStickSwingDash ItemParasolOpen ItemParasolFall ItemParasolFallSpecial ItemParasolDamageFall
LGunShoot LGunShootAir LGunShootEmpty LGunShootAirEmpty FireFlowerShoot FireFlowerShootAir ItemScrew ItemScrewAir
DamageScrew DamageScrewAir ItemScopeStart ItemScopeRapid ItemScopeFire ItemScopeEnd ItemScopeAirStart
ItemScopeAirRapid ItemScopeAirFire ItemScopeAirEnd ItemScopeStartEmpty ItemScopeRapidEmpty ItemScopeFireEmpty
ItemScopeEndEmpty ItemScopeAirStartEmpty ItemScopeAirRapidEmpty ItemScopeAirFireEmpty ItemScopeAirEndEmpty
LiftWait LiftWalk1 LiftWalk2 LiftTurn GuardOn Guard GuardOff GuardSetOff GuardReflect DownBoundU DownWaitU
DownDamageU DownStandU DownAttackU DownFowardU DownBackU DownSpotU DownBoundD DownWaitD DownDamageD DownStandD
DownAttackD DownFowardD DownBackD DownSpotD Passive PassiveStandF PassiveStandB PassiveWall PassiveWallJump
PassiveCeil ShieldBreakFly ShieldBreakFall ShieldBreakDownU ShieldBreakDownD ShieldBreakStandU ShieldBreakStandD
FuraFura Catch CatchPull CatchDash CatchDashPull CatchWait CatchAttack CatchCut ThrowF ThrowB ThrowHi ThrowLw
CapturePulledHi CaptureWaitHi CaptureDamageHi CapturePulledLw CaptureWaitLw CaptureDamageLw CaptureCut CaptureJump
CaptureNeck CaptureFoot EscapeF EscapeB Escape EscapeAir ReboundStop Rebound ThrownF ThrownB ThrownHi ThrownLw
ThrownLwWomen Pass Ottotto OttottoWait FlyReflectWall FlyReflectCeil StopWall StopCeil MissFoot CliffCatch
CliffWait CliffClimbSlow CliffClimbQuick CliffAttackSlow CliffAttackQuick CliffEscapeSlow CliffEscapeQuick
CliffJumpSlow1 CliffJumpSlow2 CliffJumpQuick1 CliffJumpQuick2 AppealR AppealL ShoulderedWait ShoulderedWalkSlow
ShoulderedWalkMiddle ShoulderedWalkFast ShoulderedTurn ThrownFF ThrownFB ThrownFHi ThrownFLw CaptureCaptain
CaptureYoshi YoshiEgg CaptureKoopa CaptureDamageKoopa CaptureWaitKoopa ThrownKoopaF ThrownKoopaB CaptureKoopaAir
CaptureDamageKoopaAir CaptureWaitKoopaAir ThrownKoopaAirF ThrownKoopaAirB CaptureKirby CaptureWaitKirby
ThrownKirbyStar ThrownCopyStar ThrownKirby BarrelWait Bury BuryWait BuryJump DamageSong DamageSongWait DamageSongRv
DamageBind CaptureMewtwo CaptureMewtwoAir ThrownMewtwo ThrownMewtwoAir WarpStarJump WarpStarFall HammerWait
HammerWalk HammerTurn HammerKneeBend HammerFall HammerJump HammerLanding KinokoGiantStart KinokoGiantStartAir
KinokoGiantEnd KinokoGiantEndAir KinokoSmallStart KinokoSmallStartAir KinokoSmallEnd KinokoSmallEndAir Entry
EntryStart EntryEnd DamageIce DamageIceJump CaptureMasterHand CaptureDamageMasterHand CaptureWaitMasterHand
ThrownMasterHand CaptureKirbyYoshi KirbyYoshiEgg CaptureRedead CaptureLikeLike DownReflect CaptureCrazyHand
CaptureDamageCrazyHand CaptureWaitCrazyHand ThrownCrazyHand BarrelCannonWait
"""
ACTION_NAMES: tuple[str, ...] = tuple(_ACTION_TABLE.split())
if len(ACTION_NAMES) != FIRST_CHARACTER_STATE:
    raise AssertionError(f"{len(ACTION_NAMES)} common action names; expected {FIRST_CHARACTER_STATE}")

CHARACTER_NAMES: tuple[str, ...] = (
    "Mario", "Fox", "Captain Falcon", "Donkey Kong", "Kirby", "Bowser", "Link", "Sheik", "Ness", "Peach", "Popo",
    "Nana", "Pikachu", "Samus", "Yoshi", "Jigglypuff", "Mewtwo", "Luigi", "Marth", "Zelda", "Young Link",
    "Dr. Mario", "Falco", "Pichu", "Mr. Game & Watch", "Ganondorf", "Roy", "Master Hand", "Crazy Hand",
    "Wireframe Male", "Wireframe Female", "Giga Bowser", "Sandbag",
)  # fmt: skip


def action_name(action: int) -> str:
    """The game's name of an action-state id ("Wait", "KneeBend"); character-specific ids are "Special<id>"."""
    if 0 <= action < FIRST_CHARACTER_STATE:
        return ACTION_NAMES[action]
    return f"Special{action}" if action >= FIRST_CHARACTER_STATE else f"Unknown{action}"


def character_name(character: int) -> str:
    """The name of an internal character id ("Marth" for 18); "character <id>" outside the table."""
    return CHARACTER_NAMES[character] if 0 <= character < len(CHARACTER_NAMES) else f"character {character}"
