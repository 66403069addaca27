"""The presets' taxonomies: the axes an item of a preset generation is drawn from (docs/architecture.md,
"Pipelines and resumability": an item's prompt is a pure function of the spec and its index).

Each taxonomy is an ordered tuple of (variable name, values). The first axis is the subject: a spec with
`topics` replaces it with its own topics and still varies the other axes. Values are plain data — edit them
freely; the sampling lives in app/services/generation.py.
"""

from __future__ import annotations

Axis = tuple[str, tuple[str, ...]]

SCAFFOLDING: tuple[Axis, ...] = (
    ("subject", (
        "adding and comparing fractions",
        "solving linear equations in one variable",
        "basic probability with dice and cards",
        "areas and perimeters of composite shapes",
        "percentages, discounts and percentage change",
        "recursion in Python (a function that calls itself)",
        "loops and off-by-one errors in list indexing",
        "Newton's second law and free-body diagrams",
        "balancing chemical equations",
        "photosynthesis and cellular respiration",
        "subject-verb agreement in English sentences",
        "building a thesis and supporting paragraphs in an essay",
    )),
    ("difficulty", (
        "introductory (the student has just met the idea)",
        "intermediate (the student knows the basics but not when to apply them)",
        "challenging (a multi-step problem that combines two ideas)",
    )),
    ("misconception", (
        "apply a rule outside the cases where it holds",
        "confuse two similar-looking terms or symbols",
        "skip a step and lose track of an intermediate result",
        "generalise from a single example",
        "have memorised a procedure without knowing why it works",
        "misread what the question is actually asking for",
        "make a sign or unit error and do not notice",
        "believe the first answer that 'looks right' without checking it",
    )),
    ("mentor_move", (
        "ask the student to explain their reasoning step by step",
        "offer a simpler, analogous problem first",
        "ask the student to check their answer against a special case",
        "point to the exact step where things went wrong without fixing it",
        "ask the student to draw a diagram or write out a small example",
        "ask what the question gives and what it asks for, before any calculation",
    )),
)

QA: tuple[Axis, ...] = (
    ("subject", (
        "the water cycle", "compound interest", "the French Revolution", "how vaccines work",
        "plate tectonics", "HTTP and how web pages load", "supply and demand", "the human circulatory system",
        "prime numbers", "climate and weather", "version control with git", "the causes of the seasons",
        "how batteries store energy", "the structure of a sonnet", "sorting algorithms", "nutrition and protein",
    )),
    ("question_type", (
        "a 'what is' definition question",
        "a 'why does it happen' question",
        "a 'how does it work' question",
        "a comparison between two related ideas",
        "a practical 'how do I' question",
        "a question about a common misconception",
        "a question that asks for a worked example",
        "a question about real-world consequences or uses",
    )),
)

TAXONOMIES: dict[str, tuple[Axis, ...]] = {"scaffolding": SCAFFOLDING, "qa": QA}
