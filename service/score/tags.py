"""Which ImageNet tags name which COCO classes, and how far the tags back the detections.

The scene tagger predicts ImageNet-1k classes (first lemma of each synset); the detector
predicts COCO classes. A tag that maps to a detected class supports the labels; a confident
tag whose class was not detected hints at a missed object.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.infer.tagger import Tag
from service.infer.yolox import Detection

_DOG_BREEDS = """Chihuahua|Japanese spaniel|Maltese dog|Pekinese|Shih-Tzu|Blenheim spaniel|papillon|
toy terrier|Rhodesian ridgeback|Afghan hound|basset|beagle|bloodhound|bluetick|
black-and-tan coonhound|Walker hound|English foxhound|redbone|borzoi|Irish wolfhound|
Italian greyhound|whippet|Ibizan hound|Norwegian elkhound|otterhound|Saluki|Scottish deerhound|
Weimaraner|Staffordshire bullterrier|American Staffordshire terrier|Bedlington terrier|
Border terrier|Kerry blue terrier|Irish terrier|Norfolk terrier|Norwich terrier|
Yorkshire terrier|wire-haired fox terrier|Lakeland terrier|Sealyham terrier|Airedale|cairn|
Australian terrier|Dandie Dinmont|Boston bull|miniature schnauzer|giant schnauzer|
standard schnauzer|Scotch terrier|Tibetan terrier|silky terrier|soft-coated wheaten terrier|
West Highland white terrier|Lhasa|flat-coated retriever|curly-coated retriever|
golden retriever|Labrador retriever|Chesapeake Bay retriever|German short-haired pointer|vizsla|
English setter|Irish setter|Gordon setter|Brittany spaniel|clumber|English springer|
Welsh springer spaniel|cocker spaniel|Sussex spaniel|Irish water spaniel|kuvasz|schipperke|
groenendael|malinois|briard|kelpie|komondor|Old English sheepdog|Shetland sheepdog|collie|
Border collie|Bouvier des Flandres|Rottweiler|German shepherd|Doberman|miniature pinscher|
Greater Swiss Mountain dog|Bernese mountain dog|Appenzeller|EntleBucher|boxer|bull mastiff|
Tibetan mastiff|French bulldog|Great Dane|Saint Bernard|Eskimo dog|malamute|Siberian husky|
dalmatian|affenpinscher|basenji|pug|Leonberg|Newfoundland|Great Pyrenees|Samoyed|Pomeranian|
chow|keeshond|Brabancon griffon|Pembroke|Cardigan|toy poodle|miniature poodle|standard poodle|
Mexican hairless"""

_BIRDS = """cock|hen|ostrich|brambling|goldfinch|house finch|junco|indigo bunting|robin|bulbul|jay|
magpie|chickadee|water ouzel|kite|bald eagle|vulture|great grey owl|black grouse|ptarmigan|
ruffed grouse|prairie chicken|peacock|quail|partridge|African grey|macaw|
sulphur-crested cockatoo|lorikeet|coucal|bee eater|hornbill|hummingbird|jacamar|toucan|drake|
red-breasted merganser|goose|black swan|white stork|black stork|spoonbill|flamingo|
little blue heron|American egret|bittern|limpkin|European gallinule|American coot|bustard|
ruddy turnstone|red-backed sandpiper|redshank|dowitcher|oystercatcher|pelican|king penguin|
albatross"""

# ImageNet first lemma -> COCO class in the detector's (YOLOX) spelling. Lemmas that name two
# different synsets ("crane": bird and machine) are left out.
_TAG_TO_COCO_GROUPS: dict[str, str] = {
    "cat": "tabby|tiger cat|Persian cat|Siamese cat|Egyptian cat",
    "dog": _DOG_BREEDS,
    "bird": _BIRDS,
    "bear": "brown bear|American black bear|ice bear|sloth bear",
    "elephant": "Indian elephant|African elephant|tusker",
    "zebra": "zebra",
    "horse": "sorrel",
    "sheep": "ram|bighorn",
    "cow": "ox|water buffalo|bison",
    "car": "sports car|convertible|cab|limousine|minivan|jeep|beach wagon|racer|Model T|"
    "police van|ambulance|car wheel|grille|car mirror",
    "bus": "school bus|trolleybus|minibus",
    "truck": "trailer truck|pickup|fire engine|garbage truck|tow truck|moving van",
    "train": "passenger car|electric locomotive|steam locomotive|freight car|streetcar|"
    "bullet train",
    "boat": "canoe|speedboat|lifeboat|fireboat|gondola|yawl|schooner|catamaran|trimaran|"
    "container ship|liner|paddlewheel|aircraft carrier|wreck",
    "aeroplane": "airliner|warplane|wing",
    "motorbike": "moped|motor scooter",
    "bicycle": "mountain bike|bicycle-built-for-two|tricycle",
    "banana": "banana",
    "orange": "orange|lemon",
    "apple": "Granny Smith",
    "broccoli": "broccoli|cauliflower",
    "pizza": "pizza",
    "hot dog": "hotdog",
    "sandwich": "cheeseburger",
    "donut": "bagel",
    "laptop": "laptop|notebook",
    "tvmonitor": "television|monitor|screen|home theater",
    "keyboard": "computer keyboard|typewriter keyboard|space bar",
    "mouse": "mouse",
    "cell phone": "cellular telephone|iPod|hand-held computer",
    "remote": "remote control",
    "clock": "analog clock|wall clock|digital clock",
    "microwave": "microwave",
    "toaster": "toaster",
    "refrigerator": "refrigerator",
    "oven": "stove|Dutch oven",
    "sink": "washbasin",
    "toilet": "toilet seat",
    "umbrella": "umbrella",
    "backpack": "backpack",
    "handbag": "purse|mailbag",
    "tie": "Windsor tie|bow tie|bolo tie",
    "skis": "ski",
    "sports ball": "soccer ball|tennis ball|basketball|volleyball|baseball|rugby ball|golf ball|"
    "croquet ball|ping-pong ball",
    "tennis racket": "racket",
    "vase": "vase",
    "teddy bear": "teddy",
    "bench": "park bench",
    "chair": "folding chair|rocking chair|barber chair|throne",
    "sofa": "studio couch",
    "bed": "four-poster|quilt",
    "diningtable": "dining table",
    "pottedplant": "pot",
    "traffic light": "traffic light",
    "stop sign": "street sign",
    "parking meter": "parking meter",
    "bottle": "beer bottle|wine bottle|water bottle|pop bottle|pill bottle",
    "wine glass": "goblet|red wine",
    "cup": "cup|coffee mug|espresso|measuring cup",
    "bowl": "mixing bowl|soup bowl",
    "spoon": "wooden spoon|ladle",
    "book": "book jacket|comic book|bookcase",
    "hair drier": "hand blower",
}

TAG_TO_COCO: dict[str, str] = {
    lemma.strip(): coco
    for coco, lemmas in _TAG_TO_COCO_GROUPS.items()
    for lemma in lemmas.replace("\n", "").split("|")
    if lemma.strip()
}


def tag_consistency(primary: Sequence[Detection], tags: Sequence[Tag]) -> dict[str, float]:
    """How far the scene tagger backs the detector.

    ``tag_support``: the highest tag probability whose COCO class was detected;
    ``tag_missing``: the highest one whose COCO class was not (a possibly missed object).
    """
    detected = {d.classname for d in primary}
    support = missing = 0.0
    for tag in tags:
        coco = TAG_TO_COCO.get(tag.name)
        if coco is None:
            continue
        if coco in detected:
            support = max(support, tag.conf)
        else:
            missing = max(missing, tag.conf)
    return {"tag_support": support, "tag_missing": missing}
