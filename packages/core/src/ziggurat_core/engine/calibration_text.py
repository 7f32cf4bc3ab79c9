"""Text run through a model once at load to measure the range of each Linear's inputs, which
int8 quantisation uses to balance activation and weight ranges (`quantization.py`).

Written for this project: a mix of prose, dialogue, lists, numbers and code, so the measured
ranges cover the kinds of input a chat model sees. Changing it changes int8 results slightly.
"""

CALIBRATION_TEXT = """\
The old lighthouse stood at the end of a narrow spit of rock, and for ninety years its lamp had \
turned every night without fail. When the keeper retired, the village argued for a whole winter \
about whether to automate it or to let it go dark. In the end a young engineer named Ada offered \
to maintain it for free, provided she could use the tower as a workshop.

Q: What is the boiling point of water at sea level?
A: 100 degrees Celsius, or 212 degrees Fahrenheit.
Q: How many days are there in a leap year?
A: 366.

Ingredients for the bread: 500 g flour, 350 ml water, 10 g salt, 100 g starter. Mix, rest for \
30 minutes, fold four times over two hours, shape, proof overnight at 4 °C, and bake at 250 °C \
for 20 minutes with steam, then 25 minutes without.

def merge_sorted(left: list[int], right: list[int]) -> list[int]:
    result = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            result.append(left[i]); i += 1
        else:
            result.append(right[j]); j += 1
    return result + left[i:] + right[j:]

SELECT customer_id, SUM(amount) AS total FROM orders WHERE created_at >= '2024-01-01' \
GROUP BY customer_id HAVING SUM(amount) > 1000 ORDER BY total DESC LIMIT 10;

The mitochondria produce most of the cell's supply of adenosine triphosphate, which is used as a \
source of chemical energy. Photosynthesis, by contrast, converts light into chemical energy in \
the chloroplasts of plants and algae. Both processes depend on gradients of protons across a \
membrane.

User: Can you help me write a polite email asking my manager for a day off next Friday?
Assistant: Of course! Here is a short draft:
"Hi Sam, I would like to request a day off on Friday, 14 June, for a family matter. My tasks \
for that day are covered, and I will make sure everything is handed over beforehand. Thank you!"

1. Preheat the oven. 2. Grease the pan. 3. Whisk the eggs with the sugar until pale. \
4. Fold in the flour. 5. Bake for 35-40 minutes.

In 1969, Apollo 11 landed on the Moon; Neil Armstrong and Buzz Aldrin spent about 21 hours on \
the surface. The price rose from $3.50 to $4.25, an increase of 21.4%. Paris, Berlin, Madrid, \
Rome, Tokyo, Nairobi, Lima and Sydney are capitals or major cities on five continents.

Les enfants jouent dans le parc pendant que leurs parents discutent. Der Zug nach München fährt \
um 9:45 Uhr ab. El mercado abre todos los días excepto el domingo.
"""
