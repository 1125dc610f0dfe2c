#!/usr/bin/env python3
"""Build the small fusegen sample corpus under samples/corpus/.

Deterministic: no network access, and the only randomness comes from a
NumPy generator with a fixed seed. Rerunning the script rewrites

    samples/corpus/passages.jsonl
    samples/corpus/images/*        (generated images, stale ones removed)
    samples/corpus/README.md       (bad-row table, derived from ROWS below)

and then checks the result with an independent validator and prints a summary.

The corpus mixes about 40 GOOD passages with about a dozen deliberately BAD
rows (see README.md) so that the ingestion stage can be tested end to end.
All passage texts were written for this project and are released under CC0.

Usage:  .venv/bin/python samples/make_sample_corpus.py
"""

from __future__ import annotations

import io
import json
import sys
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
IMAGES = CORPUS / "images"
JSONL = CORPUS / "passages.jsonl"
README = CORPUS / "README.md"

SEED = 20240601
MAX_TEXT_CHARS = 20000  # the pipeline's documented upper bound per passage


def para(s: str) -> str:
    """Collapse a triple-quoted paragraph into one line of text."""
    return " ".join(s.split())


def para_zh(s: str) -> str:
    """Same for Chinese: line breaks inside the source carry no spaces."""
    return "".join(s.split())


# ---------------------------------------------------------------------------
# Passage texts (written for this project, CC0)
# ---------------------------------------------------------------------------

T = {}

T["eiffel-tower"] = para("""
The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris,
France. It is named after the engineer Gustave Eiffel, whose company designed and
built it as the entrance arch to the 1889 World's Fair, held to mark the centenary
of the French Revolution. The main structural design is credited to the engineers
Maurice Koechlin and Émile Nouguier, with the architect Stephen Sauvestre refining
its appearance. Although many leading artists and intellectuals criticised it at
first, the tower became a global cultural icon of France. It is 330 metres tall
including its antennas and was the tallest man-made structure in the world until
the Chrysler Building in New York was completed in 1930. The tower has three
levels for visitors, with restaurants on the first and second levels, and it is
one of the most visited paid monuments in the world.
""")

T["starry-night"] = para("""
The Starry Night is an oil-on-canvas painting by the Dutch Post-Impressionist
painter Vincent van Gogh, made in June 1889. It shows the view from the
east-facing window of his room in the asylum of Saint-Paul-de-Mausole at
Saint-Rémy-de-Provence, just before sunrise, with the addition of an imaginary
village. Swirling brushstrokes fill the night sky above the village, a tall dark
cypress tree rises in the foreground, and a bright crescent moon and stars glow in
blue and yellow. Van Gogh painted it from memory during the day, about a year
before his death in 1890. Since 1941 the painting has been in the permanent
collection of the Museum of Modern Art in New York City, acquired through the
Lillie P. Bliss Bequest. It is widely regarded as one of the most recognised
paintings in Western art.
""")

T["giant-panda"] = para("""
The giant panda (Ailuropoda melanoleuca) is a bear species endemic to China. It is
easily recognised by its bold black-and-white coat, with black patches around the
eyes, over the ears and across the shoulders. Although it belongs to the order
Carnivora, bamboo shoots and leaves make up more than 99 percent of its diet, and
an adult may spend ten to sixteen hours a day feeding. The species lives in a few
mountain ranges in central China, mainly in Sichuan and also in neighbouring
Shaanxi and Gansu. Habitat loss and low birth rates once made it a symbol of
endangered wildlife, and it is the emblem of the World Wide Fund for Nature.
Conservation efforts raised the wild population, and in 2016 the IUCN reclassified
the species from endangered to vulnerable.
""")

T["neuschwanstein"] = para("""
Schloss Neuschwanstein ist ein Schloss des 19. Jahrhunderts bei Füssen im
bayerischen Allgäu. Es wurde ab 1869 im Auftrag von König Ludwig II. von Bayern
auf einem Felsen über der Pöllatschlucht errichtet, in der Nähe von Schloss
Hohenschwangau, in dem der König einen Teil seiner Jugend verbracht hatte. Der
Entwurf im Stil des Historismus orientiert sich an idealisierten Vorstellungen
mittelalterlicher Burgen und an den Opern Richard Wagners, den der König verehrte.
Ludwig II. bewohnte das unvollendete Schloss nur wenige Monate; nach seinem Tod im
Juni 1886 wurde es noch im selben Jahr für Besucher geöffnet. Heute gehört
Neuschwanstein mit weit über einer Million Besuchern im Jahr zu den
meistbesuchten Sehenswürdigkeiten Deutschlands. Das Schloss diente als Vorbild
für das Dornröschenschloss im kalifornischen Disneyland.
""")

T["blue-whale"] = para("""
The blue whale (Balaenoptera musculus) is a marine mammal belonging to the baleen
whales. Reaching a confirmed length of 29.9 metres and a weight of up to 199
tonnes, it is the largest animal known ever to have existed. Its long, slender
body is bluish-grey on the back and somewhat lighter underneath. Blue whales feed
almost exclusively on krill, which they filter from the water using baleen plates,
and an adult can eat several tonnes of krill in a single day. The species lives in
oceans around the world. Commercial whaling in the twentieth century reduced its
numbers drastically, and it was protected worldwide in 1966 by the International
Whaling Commission. It remains listed as endangered, although some populations are
slowly recovering.
""")

T["great-wall"] = para_zh("""
长城是中国古代修建的大型军事防御工程，由一系列城墙、关隘、烽火台和堡垒组成，
主要用于抵御北方游牧民族的侵扰。早在春秋战国时期，各诸侯国就开始修筑长城。
公元前221年秦始皇统一中国后，将原有的城墙连接起来并加以扩建。今天人们看到的
长城大多是明朝修建的，东起辽宁虎山，西至甘肃嘉峪关。根据2012年公布的国家测绘
结果，历代长城总长度约为21196千米。八达岭、慕田峪和山海关是最著名的游览地段。
1987年，长城被联合国教科文组织列入《世界遗产名录》。
""")

T["sagrada-familia"] = para("""
The Basílica de la Sagrada Família is a large Roman Catholic church in the Eixample
district of Barcelona, Catalonia, Spain. It is the best-known work of the Catalan
architect Antoni Gaudí, who took over the project in 1883, a year after
construction began under Francisco de Paula del Villar. Gaudí transformed the
original Gothic Revival plan into a highly personal design combining Gothic and
curvilinear Art Nouveau forms, and he devoted the last years of his life to it.
When he died in 1926 after being struck by a tram, less than a quarter of the
building was complete. Construction, funded by private donations and visitor fees,
has continued ever since. Pope Benedict XVI consecrated the church and proclaimed
it a minor basilica in 2010. Parts of the building belong to the UNESCO World
Heritage Site "Works of Antoni Gaudí".
""")

T["frida-kahlo"] = para("""
Frida Kahlo was a Mexican painter known for her self-portraits and for works
inspired by the nature and folk culture of Mexico. She was born in 1907 in
Coyoacán, then a village near Mexico City, and died there in 1954. After
contracting polio as a child, she was badly injured in a bus accident at the age
of eighteen, which caused lifelong pain and led her to begin painting while
recovering in bed. Her style mixes realism with symbolism and elements drawn from
Mexican popular art, and her paintings often explore identity, the body, pain and
death. In 1929 she married the muralist Diego Rivera, with whom she had a
turbulent relationship. Her family home, the Blue House (La Casa Azul), is now the
Frida Kahlo Museum. Well-known works include The Two Fridas and Self-Portrait with
Thorn Necklace and Hummingbird.
""")

T["mount-everest"] = para("""
Mount Everest is Earth's highest mountain above sea level, located in the
Mahalangur Himal sub-range of the Himalayas. The border between Nepal and the
Tibet Autonomous Region of China runs across its summit. Its elevation of 8,848.86
metres was announced jointly by Chinese and Nepali authorities in 2020. The
mountain is known in Nepali as Sagarmatha and in Tibetan as Chomolungma. Its
English name honours George Everest, a British Surveyor General of India, and was
adopted by the Royal Geographical Society in 1865. The first confirmed ascent was
made on 29 May 1953 by Edmund Hillary of New Zealand and the Sherpa mountaineer
Tenzing Norgay, by way of the southeast ridge. Climbers face dangers including
altitude sickness, extreme weather, avalanches and the Khumbu Icefall.
""")

T["antonin-dvorak"] = para("""
Antonín Dvořák was a Czech composer and one of the first Czech composers to
achieve worldwide recognition. Born in 1841 in Nelahozeves, near Prague, in what
was then the Austrian Empire, he often used rhythms and other features of Moravian
and Bohemian folk music in his works, following the example of Bedřich Smetana.
Early support from Johannes Brahms helped him gain an international audience,
notably with his Slavonic Dances. From 1892 to 1895 he was director of the
National Conservatory of Music of America in New York City. There he wrote his
Symphony No. 9 in E minor, known as "From the New World", as well as the
"American" String Quartet. His other well-known works include the Cello Concerto
in B minor and the opera Rusalka, which contains the aria "Song to the Moon". He
died in Prague in 1904.
""")

T["la-joconde"] = para("""
La Joconde, ou Portrait de Mona Lisa, est un tableau du peintre italien Léonard de
Vinci, réalisé à l'huile sur un panneau de bois de peuplier. Commencé vers 1503 à
Florence, il représente probablement Lisa Gherardini, épouse du marchand florentin
Francesco del Giocondo, d'où le nom de l'œuvre. Léonard de Vinci y a employé la
technique du sfumato, qui adoucit les contours par des passages subtils de la
lumière à l'ombre, et le sourire énigmatique du modèle a fait couler beaucoup
d'encre. Acquis par le roi François Ier, le tableau est passé des collections
royales aux collections nationales françaises et il est exposé au musée du Louvre
à Paris. En 1911, il fut volé par Vincenzo Peruggia, un ancien employé du musée, et
ne fut retrouvé qu'en 1913 à Florence. C'est aujourd'hui l'un des tableaux les plus
célèbres au monde.
""")

T["golden-gate-bridge"] = para("""
The Golden Gate Bridge is a suspension bridge spanning the Golden Gate, the strait
connecting San Francisco Bay to the Pacific Ocean. It links the city of San
Francisco, California, to Marin County. Construction began in 1933 and the bridge
opened in 1937. Its chief engineer was Joseph Strauss, while Charles Ellis and Leon
Moisseiff did much of the structural design and the architect Irving Morrow chose
the Art Deco details and the distinctive colour known as International Orange.
With a main span of 1,280 metres (4,200 feet), it had the longest suspension
bridge main span in the world when it opened, a record it held until 1964. The
bridge carries U.S. Route 101 and California State Route 1 and is one of the most
photographed bridges in the world.
""")

T["axolotl"] = para("""
The axolotl (Ambystoma mexicanum) is a salamander known for neoteny: unlike most
amphibians, it usually reaches adulthood without undergoing metamorphosis,
keeping its gills and living entirely in water. Its feathery external gills grow
from the sides of the head behind the wide mouth. The species is native only to
the lake system around Mexico City, notably Lake Xochimilco and formerly Lake
Chalco. Wild populations have declined sharply because of urban expansion, water
pollution and introduced fish such as tilapia and carp, and the axolotl is listed
as critically endangered. By contrast, it is common in captivity as a pet and as a
laboratory animal, because it can regenerate lost limbs, parts of its heart and
spinal cord, and other tissues. Wild-type axolotls are brownish, while pale
leucistic forms are popular in aquariums.
""")

T["rms-titanic"] = para("""
RMS Titanic was a British ocean liner operated by the White Star Line that sank in
the North Atlantic Ocean on 15 April 1912, after striking an iceberg during her
maiden voyage from Southampton, England, to New York City. Of the estimated 2,224
passengers and crew aboard, more than 1,500 died, making it one of the deadliest
peacetime sinkings of a single ship. Titanic was built by the Harland and Wolff
shipyard in Belfast and was the largest ship afloat when she entered service.
Thomas Andrews, the shipyard's chief naval architect who oversaw her design, died
in the disaster, as did Captain Edward Smith. The ship carried only 20 lifeboats,
enough for about half of those on board. The wreck was located in 1985 at a depth
of about 3,800 metres by a team led by Robert Ballard and Jean-Louis Michel.
""")

T["beethoven"] = para("""
Ludwig van Beethoven war ein deutscher Komponist und Pianist. Er wurde im Dezember
1770 in Bonn getauft und zog 1792 nach Wien, wo er bei Joseph Haydn Unterricht
nahm und bis zu seinem Tod im Jahr 1827 lebte. Beethoven gilt als Vollender der
Wiener Klassik und als Wegbereiter der Romantik. Zu seinen bekanntesten Werken
gehören neun Sinfonien, 32 Klaviersonaten, darunter die „Mondscheinsonate“, fünf
Klavierkonzerte, die Oper „Fidelio“ und die „Missa solemnis“. Schon um 1798 begann
sein Gehör nachzulassen, und in seinen letzten Lebensjahren war er nahezu taub.
Dennoch schrieb er gerade in dieser Zeit einige seiner bedeutendsten Werke. Der
letzte Satz seiner 9. Sinfonie vertont Friedrich Schillers Gedicht „An die
Freude“; die Melodie ist heute die Hymne der Europäischen Union.
""")

T["sao-paulo"] = para("""
São Paulo is the most populous city in Brazil and the capital of the state of São
Paulo in the country's southeast. With more than eleven million inhabitants in the
city proper and over twenty million in its metropolitan area, it is the largest
city in the Southern Hemisphere. It was founded in 1554 by Jesuit priests,
including José de Anchieta and Manuel da Nóbrega, as a mission among the local
Indigenous people. The city grew rapidly from the late nineteenth century through
the coffee trade and industrialisation, attracting immigrants from Italy, Portugal,
Japan, Lebanon and elsewhere; it is home to the largest Japanese community outside
Japan. Today it is Brazil's main financial centre. Landmarks include Avenida
Paulista, Ibirapuera Park and the São Paulo Museum of Art (MASP).
""")

T["tardigrade"] = para("""
Tardigrades, also called water bears or moss piglets, are a phylum of microscopic
eight-legged animals. Most are about half a millimetre long or less. They were
first described by the German zoologist Johann August Ephraim Goeze in 1773.
Tardigrades live in a wide range of habitats, from mountaintops and the deep sea
to the thin films of water on mosses and lichens. Many species can survive extreme
conditions by entering a dehydrated state called cryptobiosis, in which metabolism
almost stops. In this state they have tolerated very low and high temperatures,
high pressures, strong radiation and, in a 2007 experiment, exposure to the vacuum
of outer space in low Earth orbit. More than a thousand species have been
described.
""")

T["terracotta-army"] = para_zh("""
秦始皇兵马俑是秦始皇陵的陪葬坑，位于陕西省西安市临潼区。1974年，当地农民在打井时
偶然发现了这些陶俑。已发掘的三个主要俑坑中出土了大量与真人大小相近的陶制士兵、
战马和战车，据估计仅兵俑就有约8000个。每个陶俑的面部表情、发型和服饰都各不相同，
反映了秦代高超的雕塑技艺。陶俑最初施有彩绘，但出土后颜料接触空气，很快就会褪色
脱落。1987年，秦始皇陵及兵马俑坑被列入《世界遗产名录》，兵马俑常被誉为
“世界第八大奇迹”。
""")

T["voyager-1"] = para("""
Voyager 1 is a space probe launched by NASA on 5 September 1977 as part of the
Voyager programme to study the outer Solar System. Launched sixteen days after its
twin, Voyager 2, it flew past Jupiter in 1979 and Saturn in 1980, making a close
approach to Saturn's largest moon, Titan. On 14 February 1990 it took the "Pale
Blue Dot" photograph of Earth from a distance of about six billion kilometres. In
August 2012 Voyager 1 became the first human-made object to cross the heliopause
and enter interstellar space, and it is the most distant human-made object from
Earth. The probe carries a Golden Record, a phonograph record with sounds and
images chosen to portray life and culture on Earth. It is powered by radioisotope
thermoelectric generators, and its instruments are being switched off gradually
as the power declines.
""")

T["hubble"] = para("""
The Hubble Space Telescope is a space telescope that was launched into low Earth
orbit in 1990 aboard the Space Shuttle Discovery and remains in operation. It is
named after the American astronomer Edwin Hubble. Built by NASA with contributions
from the European Space Agency, it has a 2.4-metre main mirror and observes in
ultraviolet, visible and near-infrared light. Shortly after launch, scientists
discovered that the main mirror had been ground to the wrong shape, blurring its
images. A Space Shuttle servicing mission in 1993 installed corrective optics, and
four later missions upgraded and repaired the telescope, the last in 2009.
Hubble's observations have helped to determine the rate of expansion of the
universe, and its Hubble Deep Field images revealed thousands of distant galaxies.
""")

T["saturn"] = para("""
Saturn is the sixth planet from the Sun and the second largest in the Solar
System, after Jupiter. It is a gas giant composed mostly of hydrogen and helium,
with an average radius about nine times that of Earth. Although its volume is more
than 700 times Earth's, its mean density is lower than that of water. Saturn is
best known for its prominent ring system, which is made mostly of ice particles
with smaller amounts of rocky debris and dust. The planet has well over a hundred
known moons; the largest, Titan, is bigger than the planet Mercury and has a thick
nitrogen atmosphere. Saturn has been visited by four spacecraft: Pioneer 11,
Voyager 1, Voyager 2 and the Cassini–Huygens mission, which orbited the planet
from 2004 to 2017.
""")

T["rosetta-stone"] = para("""
The Rosetta Stone is a stele of granodiorite inscribed with three versions of a
decree issued in Memphis, Egypt, in 196 BC during the Ptolemaic dynasty on behalf
of King Ptolemy V. The top and middle texts are in ancient Egyptian, written in
hieroglyphic and Demotic scripts respectively, while the bottom text is in ancient
Greek. Because the decree is essentially the same in all three versions, the stone
became a key to deciphering Egyptian hieroglyphs. It was found in 1799 by French
soldiers of Napoleon's campaign in Egypt near the town of Rashid (Rosetta) in the
Nile Delta. Under the Capitulation of Alexandria it passed to the British in 1801,
and it has been displayed at the British Museum in London since 1802. The French
scholar Jean-François Champollion announced his decipherment of the hieroglyphs
in 1822.
""")

T["penicillin"] = para("""
Penicillin was one of the first antibiotics to be used in medicine. In 1928 the
Scottish physician and microbiologist Alexander Fleming, working at St Mary's
Hospital in London, noticed that a mould contaminating one of his culture plates
of Staphylococcus bacteria had killed the bacteria around it. He identified the
mould as belonging to the genus Penicillium and named the antibacterial substance
it produced penicillin. Purifying the drug proved difficult, and it was not until
around 1940 that Howard Florey, Ernst Chain and their colleagues at the University
of Oxford developed methods to produce it in useful quantities and demonstrated
its effectiveness. Mass production in the United States and Britain during the
Second World War saved many lives. Fleming, Florey and Chain shared the 1945 Nobel
Prize in Physiology or Medicine.
""")

T["machu-picchu"] = para("""
Machu Picchu is a fifteenth-century Inca citadel on a mountain ridge about 2,430
metres above sea level in the Eastern Cordillera of southern Peru. It is often
thought to have been built as an estate for the Inca emperor Pachacuti, and it
was abandoned around the time of the Spanish conquest. The site's buildings are in
the classical Inca style, with walls of polished dry stone fitted together without
mortar; notable structures include the Temple of the Sun, the Intihuatana stone
and the Room of the Three Windows. Although known locally, Machu Picchu was
brought to international attention in 1911 by the American explorer Hiram
Bingham. It was declared a Peruvian Historic Sanctuary in 1981 and a UNESCO World
Heritage Site in 1983, and it is Peru's most visited tourist attraction.
""")

T["tour-de-france"] = para("""
The Tour de France is an annual men's multiple-stage bicycle race held mainly in
France. First organised in 1903 by the newspaper L'Auto to increase its sales, it
is the oldest and most prestigious of cycling's three Grand Tours, the others
being the Giro d'Italia and the Vuelta a España. The race usually takes place over
three weeks in July and covers around 3,500 kilometres, including flat stages,
time trials and mountain stages in the Alps and the Pyrenees. The rider with the
lowest cumulative time wears the leader's yellow jersey, the maillot jaune, while
other jerseys reward the best sprinter, the best climber and the best young rider.
Traditionally the race finishes on the Champs-Élysées in Paris. It has been
cancelled only during the two World Wars.
""")

T["pele"] = para("""
Edson Arantes do Nascimento, known as Pelé, was a Brazilian professional
footballer who played as a forward and is widely regarded as one of the greatest
players of all time. Born in 1940 in Três Corações, Minas Gerais, he joined Santos
at the age of fifteen and spent most of his career there, later playing for the
New York Cosmos in the United States. Pelé is the only player to have won three
FIFA World Cups, in 1958, 1962 and 1970. At the 1958 tournament in Sweden, aged
seventeen, he scored twice in the final. He scored 77 goals for the Brazil
national team, a record that stood for decades. After retiring he served as
Brazil's Extraordinary Minister for Sport from 1995 to 1998. He died in São Paulo
in 2022.
""")

T["paella"] = para("""
Paella is a rice dish from the Valencian Community on the east coast of Spain. Its
name is the Valencian word for the wide, shallow pan in which it is cooked. The
dish developed in the countryside around the Albufera lagoon near the city of
Valencia and is now regarded as one of Spain's national dishes. Traditional paella
valenciana is made with short-grain rice, olive oil, chicken and rabbit, green
beans, butter beans, tomato and saffron, with rosemary or snails sometimes added.
Seafood paella replaces the meat with fish and shellfish, and mixed paella
combines both. Ideally the rice is cooked in a thin layer over an open fire until
a slightly toasted crust, called socarrat, forms at the bottom of the pan.
""")

T["pizza-margherita"] = para("""
Pizza Margherita is a typical Neapolitan pizza topped with San Marzano tomatoes,
mozzarella cheese, fresh basil, salt and extra-virgin olive oil. Its red, white
and green toppings match the colours of the Italian flag. According to a popular
story, the pizzaiolo Raffaele Esposito created it in Naples in June 1889 in honour
of Margherita of Savoy, the Queen consort of Italy, although similar pizzas are
documented earlier. The dough is traditionally baked for only a minute or two in a
very hot wood-fired oven. Pizza napoletana is protected in the European Union as a
Traditional Speciality Guaranteed, and in 2017 the art of the Neapolitan
pizzaiuolo was inscribed on UNESCO's list of the Intangible Cultural Heritage of
Humanity.
""")

T["peking-duck"] = para_zh("""
北京烤鸭是北京著名的传统菜肴，以色泽红润、皮脆肉嫩而闻名。它的历史可以追溯到
古代的宫廷菜肴，明朝时已在北京流行。制作烤鸭通常选用北京填鸭，先向鸭皮下充气
使皮肉分离，再烫皮、刷糖水并晾干，然后放入炉中烤制。烤制方法主要分为挂炉和焖炉
两种，分别以全聚德和便宜坊为代表。上桌时，厨师会把鸭肉片成薄片，食客用薄饼卷起
鸭肉，配上葱丝、黄瓜条和甜面酱一起食用。剩下的鸭架常被用来熬汤。
""")

T["eniac"] = para("""
ENIAC (Electronic Numerical Integrator and Computer) was the first programmable,
electronic, general-purpose digital computer. It was designed by John Mauchly and
J. Presper Eckert at the University of Pennsylvania's Moore School of Electrical
Engineering and built during the Second World War for the United States Army, to
calculate artillery firing tables. Completed in 1945 and presented to the public
in February 1946, ENIAC contained about 18,000 vacuum tubes, weighed roughly 27
tonnes and filled a large room. It was programmed at first by setting switches and
plugging cables, work largely done by a team of six women programmers, including
Kathleen McNulty, Jean Jennings and Betty Snyder. Among its early tasks were
calculations for the development of the hydrogen bomb. ENIAC remained in use
until 1955.
""")

T["enigma-machine"] = para("""
The Enigma machine is a cipher device developed in the early twentieth century and
used extensively by Nazi Germany during the Second World War to protect military
and diplomatic communications. It was invented by the German engineer Arthur
Scherbius at the end of the First World War. An Enigma has a keyboard, a set of
rotating wheels called rotors, a lampboard and, in military versions, a plugboard;
each key press advances the rotors, so the letter substitution changes with every
character. Polish mathematicians of the Cipher Bureau, led by Marian Rejewski,
first broke Enigma in 1932 and shared their methods with France and Britain in
1939. At Bletchley Park, codebreakers including Alan Turing and Gordon Welchman
built electromechanical machines called bombes to read Enigma traffic.
""")

T["garcia-marquez"] = para("""
Gabriel García Márquez was a Colombian novelist, short-story writer and
journalist, affectionately known as Gabo throughout Latin America. Born in 1927 in
Aracataca, he is considered one of the most significant authors of the twentieth
century and a leading figure of magic realism, a style that presents fantastic
events within otherwise realistic settings. His best-known novel, One Hundred
Years of Solitude (Cien años de soledad, 1967), follows several generations of the
Buendía family in the fictional town of Macondo and has sold tens of millions of
copies. His other major works include Love in the Time of Cholera, Chronicle of a
Death Foretold and The Autumn of the Patriarch. He was awarded the Nobel Prize in
Literature in 1982. He spent much of his later life in Mexico City, where he died
in 2014.
""")

T["don-quixote"] = para("""
Don Quixote is a Spanish novel by Miguel de Cervantes, published in two parts in
1605 and 1615. The first part is titled El ingenioso hidalgo don Quijote de la
Mancha. The story follows a minor nobleman from La Mancha who reads so many
chivalric romances that he loses his mind and sets out as a knight-errant,
calling himself Don Quixote. Accompanied by the simple farmer Sancho Panza as his
squire, he mistakes inns for castles and, in the most famous episode, attacks
windmills that he believes are giants. The novel is considered a founding work of
Western literature and is often called the first modern novel. It has been
translated into many languages, and the English word "quixotic" derives from its
hero's name.
""")

T["metropolis"] = para("""
Metropolis is a 1927 German expressionist science-fiction silent film directed by
Fritz Lang and written by Thea von Harbou, in collaboration with Lang, from her
1925 novel. It stars Gustav Fröhlich, Brigitte Helm and Alfred Abel. Set in a
futuristic city sharply divided between wealthy industrialists living in towers
and workers toiling underground, the film follows Freder, the son of the city's
master, and Maria, a saintly figure among the workers, whose likeness is given to
a robot. Produced by UFA at the Babelsberg studio, it was one of the most
expensive films of its time. After its premiere it was heavily cut; a nearly
complete version was restored in 2010 after a 16 mm copy was found in Buenos Aires
in 2008. In 2001 it became the first film inscribed on UNESCO's Memory of the
World Register.
""")

T["monarch-butterfly"] = para("""
The monarch butterfly (Danaus plexippus) is a milkweed butterfly in the family
Nymphalidae. Its wings have a bright orange pattern with black veins and
white-spotted black borders, and it has a wingspan of about 9 to 10 centimetres.
The larvae feed only on milkweed plants, and the toxins they absorb make both
caterpillars and adults distasteful to predators; the bright colouring serves as
a warning. The eastern North American population is famous for its annual
southward migration in late summer and autumn, when millions of monarchs travel
several thousand kilometres to overwinter in the oyamel fir forests of central
Mexico. No single butterfly completes the round trip, and the return northward
takes several generations.
""")

T["citizen-kane"] = para("""
Citizen Kane is a 1941 American drama film directed and produced by Orson Welles,
who also co-wrote the screenplay with Herman J. Mankiewicz and played the lead
role. It was Welles's first feature film. The story traces the life of Charles
Foster Kane, a newspaper magnate, through the memories of people who knew him, as
a reporter tries to discover the meaning of his dying word, "Rosebud". The
character was partly based on the publisher William Randolph Hearst, who tried to
prevent the film's release. Citizen Kane is celebrated for the innovative
cinematography of Gregg Toland, including deep-focus shots and low camera angles,
and for its non-linear narrative. It won the Academy Award for Best Original
Screenplay and is frequently named the greatest film ever made.
""")

T["zugspitze"] = para("""
Die Zugspitze ist mit 2962 Metern über dem Meeresspiegel der höchste Berg
Deutschlands. Sie liegt im Wettersteingebirge in den Nördlichen Kalkalpen,
südwestlich von Garmisch-Partenkirchen, und über ihren Gipfel verläuft die Grenze
zwischen Deutschland und Österreich. Die erste belegte Besteigung gelang 1820 dem
Leutnant Josef Naus mit seinem Messgehilfen und einem Bergführer. Heute führen
drei Seilbahnen auf den Berg sowie die Bayerische Zugspitzbahn, eine Zahnradbahn,
die seit 1930 in Betrieb ist und auf das Zugspitzplatt fährt. Dort befindet sich
das höchstgelegene Skigebiet Deutschlands. Auf dem Gipfel steht ein vergoldetes
Gipfelkreuz, und seit 1900 besteht dort eine Wetterwarte, die heute vom Deutschen
Wetterdienst betrieben wird.
""")

T["shinkansen"] = para("""
The Shinkansen, often called the bullet train, is a network of high-speed railway
lines in Japan. The first line, the Tōkaidō Shinkansen between Tokyo and
Shin-Ōsaka, opened in 1964, shortly before the Tokyo Olympic Games, and is widely
regarded as the world's first high-speed railway. The network has since expanded
to connect most major cities on the islands of Honshu and Kyushu, and a line
through the Seikan Tunnel reaches southern Hokkaido. Trains run on standard-gauge
track separate from the narrow-gauge conventional lines and reach operating
speeds of up to 320 km/h. The system is known for its punctuality and safety
record: no passengers have been killed in a derailment or collision. It is
operated by several Japan Railways Group companies.
""")

T["marie-curie"] = para("""
Marie Skłodowska-Curie was a Polish and naturalised French physicist and chemist
who conducted pioneering research on radioactivity. Born Maria Skłodowska in
Warsaw in 1867, she moved to Paris in 1891 to study at the Sorbonne. With her
husband Pierre Curie she discovered the elements polonium, named after her native
Poland, and radium in 1898. She was the first woman to win a Nobel Prize, sharing
the 1903 Nobel Prize in Physics with Pierre Curie and Henri Becquerel, and she
received the 1911 Nobel Prize in Chemistry alone. She remains the only person to
have won Nobel Prizes in two different sciences. She was also the first woman to
become a professor at the University of Paris. She died in 1934 of aplastic
anaemia, probably caused by long exposure to radiation.
""")

T["amazon-river"] = para("""
The Amazon River in South America is the largest river in the world by discharge
volume. It flows eastwards across the continent, mostly through Brazil, and
empties into the Atlantic Ocean. Its headwaters lie in the Andes of Peru, and its
length of roughly 6,400 kilometres makes it either the longest or the
second-longest river in the world, depending on how the source and mouth are
measured; the Nile is its main rival. The Amazon carries about a fifth of all the
fresh water that rivers discharge into the oceans. Its drainage basin, the largest
of any river, covers around seven million square kilometres and contains most of
the Amazon rainforest. The Spanish explorer Francisco de Orellana led the first
known European descent of the river in 1541 and 1542. No bridges cross the main
river.
""")

# --- texts used by BAD rows (the text itself is fine unless noted) ----------

T_MONTPARNASSE = para("""
Tour Montparnasse is a 210-metre office skyscraper in the Montparnasse area of
Paris. Completed in 1973, it was the tallest skyscraper in France until 2011. Its
stark, monolithic appearance was widely criticised, and two years after its
completion the construction of buildings over seven storeys high in the city
centre was banned. The 56th floor and the rooftop terrace offer panoramic views of
Paris, including the Eiffel Tower, and the building is due to be renovated with a
new facade.
""")

T_COLOSSEUM_NUL = (
    "The Colosseum is an elliptical amphitheatre in the centre of Rome, Italy, "
    "just east of the Roman Forum.\u0000 Built of travertine limestone, tuff and "
    "brick-faced concrete, it is the largest ancient amphitheatre ever built. "
    "Construction began under the emperor Vespasian in AD 72 and was completed in "
    "AD 80 under his successor Titus. It could hold an estimated 50,000 to 80,000 "
    "spectators, who watched gladiatorial contests and other public spectacles."
)

T_BIG_BEN = para("""
The Elizabeth Tower, commonly called Big Ben after its great bell, is the clock
tower at the north end of the Palace of Westminster in London. Designed by Augustus
Pugin in the Gothic Revival style, it was completed in 1859. The tower is about 96
metres tall, and when it was finished its Great Clock was the largest and most
accurate four-faced striking and chiming clock in the world. It was renamed in
2012 to mark the Diamond Jubilee of Queen Elizabeth II.
""")

T_OPERA_HOUSE = para("""
The Sydney Opera House is a multi-venue performing arts centre on Bennelong Point
in Sydney Harbour, Australia. It was designed by the Danish architect Jørn Utzon,
whose entry won an international design competition in 1957, and it was formally
opened by Queen Elizabeth II in 1973. Its roof is made of a series of precast
concrete shells that resemble billowing sails. The building was inscribed as a
UNESCO World Heritage Site in 2007 and is one of the most recognisable buildings of
the twentieth century.
""")

T_KOMODO = para("""
The Komodo dragon (Varanus komodoensis) is a species of monitor lizard found on
the Indonesian islands of Komodo, Rinca, Flores and Gili Motang. It is the largest
living species of lizard, growing to a maximum length of about 3 metres and
weighing up to around 70 kilograms. Komodo dragons are apex predators that hunt
deer, pigs and water buffalo, and their bite delivers venom that prevents blood
from clotting. Much of the species' range is protected within Komodo National
Park.
""")

T_NIAGARA = para("""
Niagara Falls is a group of three waterfalls on the Niagara River, which forms
part of the border between the Canadian province of Ontario and the U.S. state of
New York. The largest, Horseshoe Falls, lies mostly in Canada, while the smaller
American Falls and Bridal Veil Falls are in the United States. Together the falls
have the highest flow rate of any waterfall in North America with a vertical drop
of more than 50 metres. They are a major source of hydroelectric power and a
popular tourist destination.
""")

T_REEF_SENTENCE = (
    "The Great Barrier Reef, off the coast of Queensland in Australia, is the "
    "world's largest coral reef system. "
)
T_TOO_LONG = (T_REEF_SENTENCE * 220).strip()

# Raw bytes: Latin-1 encoded "é" (0xE9) is not valid UTF-8.
BAD_UTF8_LINE = (
    b'{"doc_id": "bad-utf8", "title": "Caf\xe9 au lait", "text": "Caf\xe9 au lait '
    b"is a French coffee drink made by mixing strong hot coffee with hot milk in "
    b"roughly equal parts. In France it is traditionally served at breakfast in a "
    b"wide bowl, and a croissant or a slice of bread may be dipped into it. The "
    b'name simply means coffee with milk.", "domain": "food"}'
)

# Truncated JSON object (no closing quote or brace).
BAD_JSON_LINE = (
    b'{"doc_id": "bad-json-truncated", "title": "Acropolis of Athens", '
    b'"text": "The Acropolis of Athens is an ancient citadel on a rocky outcrop '
    b"above the city of Athens, containing the remains of several buildings of "
    b"great architectural and historical significance, the most famous being the Parth"
)

# ---------------------------------------------------------------------------
# Row plan. Each entry: (kind, payload, expected_reason_or_None)
#   kind "json": payload is a dict dumped with json.dumps(ensure_ascii=False)
#   kind "raw":  payload is bytes written verbatim
# expected reason None  => GOOD row.
# ---------------------------------------------------------------------------


def good(doc_id, title, domain, image=None, lang=None):
    row = {}
    if doc_id is not None:
        row["doc_id"] = doc_id
    if title is not None:
        row["title"] = title
    row["text"] = T[doc_id if doc_id is not None else "penicillin"]
    if image is not None:
        row["image"] = image
    if domain is not None:
        row["domain"] = domain
    return ("json", row, None, lang or "en")


def bad_json(row, reason):
    return ("json", row, reason, "en")


def bad_raw(data, reason, label):
    return ("raw", (data, label), reason, "en")


ROWS = [
    good("eiffel-tower", "Eiffel Tower", "architecture", "images/eiffel_tower.png"),
    good("starry-night", "The Starry Night", "art", "images/starry_night.png"),
    bad_json({"doc_id": "bad-empty-text", "title": "Empty", "text": "",
              "domain": "history"},
             'empty text ""'),
    good("giant-panda", "Giant panda", "animals", "images/giant_panda.png"),
    good("neuschwanstein", "Schloss Neuschwanstein", "architecture",
         "images/neuschwanstein.jpg", lang="de"),
    good("blue-whale", "Blue whale", "animals"),
    bad_json({"doc_id": "bad-nul-in-text", "title": "Colosseum",
              "text": T_COLOSSEUM_NUL, "domain": "history"},
             "text contains a NUL character (\\u0000)"),
    good("great-wall", "长城", "history", lang="zh"),
    good("sagrada-familia", "Sagrada Família", "architecture",
         "images/sagrada_familia.jpg"),
    good("frida-kahlo", "Frida Kahlo", "art"),
    bad_raw(BAD_UTF8_LINE, "line is not valid UTF-8 (Latin-1 byte 0xE9 for 'é')",
            "bad-utf8"),
    good("mount-everest", "Mount Everest", "geography", "images/mount_everest.png"),
    good("antonin-dvorak", "Antonín Dvořák", "music"),
    bad_json({"doc_id": "bad-whitespace-text", "title": "Whitespace only",
              "text": "   \n\t  \u00a0 \r\n   ", "domain": "music"},
             "text is whitespace only (spaces, tab, newlines, NBSP)"),
    good("la-joconde", "La Joconde", "art", lang="fr"),
    good("golden-gate-bridge", "Golden Gate Bridge", "transport",
         "images/golden_gate_bridge.jpg"),
    good("axolotl", None, "animals"),
    bad_json({"doc_id": "eiffel-tower", "title": "Tour Montparnasse",
              "text": T_MONTPARNASSE, "domain": "architecture"},
             "duplicate doc_id: reuses 'eiffel-tower' (line 1) with different "
             "text; first occurrence wins"),
    good("rms-titanic", "RMS Titanic", "transport", "images/rms_titanic.jpg"),
    good("beethoven", "Ludwig van Beethoven", "music", lang="de"),
    bad_json({"doc_id": "bad-img-truncated", "title": "Elizabeth Tower",
              "text": T_BIG_BEN, "image": "images/bad_truncated.png",
              "domain": "architecture"},
             "image file is a valid PNG cut in half (truncated)"),
    good("sao-paulo", "São Paulo", "geography", "images/sao_paulo.png"),
    good("tardigrade", None, "biology"),
    good("terracotta-army", "秦始皇兵马俑", "history", lang="zh"),
    bad_json({"doc_id": "bad-text-number", "title": "Number", "text": 12345,
              "domain": "science"},
             "text is a JSON number (12345), not a string"),
    good("voyager-1", "Voyager 1", "astronomy", "images/voyager_1.png"),
    good("hubble", "Hubble Space Telescope", None),
    bad_json({"doc_id": "bad-dup-text", "title": "Blue whale (copy)",
              "text": T["blue-whale"], "domain": "animals"},
             "exact duplicate of the text of 'blue-whale' (line 6) under a new "
             "doc_id"),
    good("saturn", "Saturn", "astronomy", "images/saturn.png"),
    good("rosetta-stone", "Rosetta Stone", "history"),
    good(None, "Penicillin", "science"),  # no doc_id key: GOOD, id is derived
    good("machu-picchu", "Machu Picchu", "history"),
    bad_json({"doc_id": "bad-img-empty", "title": "Sydney Opera House",
              "text": T_OPERA_HOUSE, "image": "images/bad_empty.png",
              "domain": "architecture"},
             "image file has zero bytes"),
    good("tour-de-france", "Tour de France", "sports"),
    good("pele", "Pelé", "sports"),
    bad_raw(BAD_JSON_LINE, "not valid JSON (truncated object, no closing quote/brace)",
            "bad-json-truncated"),
    good("paella", "Paella", "food"),
    good("pizza-margherita", None, "food"),
    good("peking-duck", "北京烤鸭", "food", lang="zh"),
    bad_json({"doc_id": "bad-too-long", "title": "Great Barrier Reef",
              "text": T_TOO_LONG, "domain": "geography"},
             f"text is {len(T_TOO_LONG)} characters (> {MAX_TEXT_CHARS}); one "
             "sentence repeated"),
    good("eniac", "ENIAC", "technology"),
    good("enigma-machine", "Enigma machine", None),
    bad_json({"doc_id": "bad-img-not-image", "title": "Komodo dragon",
              "text": T_KOMODO, "image": "images/bad_not_image.png",
              "domain": "animals"},
             "image file is a plain-text file named .png"),
    good("garcia-marquez", "Gabriel García Márquez", "literature"),
    good("don-quixote", "Don Quixote", None),
    good("metropolis", "Metropolis (1927 film)", "film"),
    good("monarch-butterfly", "Monarch butterfly", "animals",
         "images/monarch_butterfly.gif"),
    bad_json({"doc_id": "bad-img-missing", "title": "Niagara Falls",
              "text": T_NIAGARA, "image": "images/missing_photo.png",
              "domain": "geography"},
             "image path does not exist"),
    good("citizen-kane", None, "film"),
    good("zugspitze", None, "geography", lang="de"),
    good("shinkansen", "Shinkansen", "transport"),
    good("marie-curie", "Marie Skłodowska-Curie", "science"),
    good("amazon-river", "Amazon River", "geography"),
]


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def _font(size=11):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # very old Pillow (no size argument) / no FreeType
        return ImageFont.load_default()


def _vgradient(w, h, top, bottom):
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    a = np.array(top, float)[None, None, :]
    b = np.array(bottom, float)[None, None, :]
    arr = np.broadcast_to(a + (b - a) * t, (h, w, len(top)))
    return np.ascontiguousarray(arr.round().astype(np.uint8))


def img_eiffel():  # PNG, RGB, 128x96
    w, h = 128, 96
    im = Image.fromarray(_vgradient(w, h, (90, 150, 230), (200, 225, 250)), "RGB")
    d = ImageDraw.Draw(im)
    d.rectangle([0, 84, w, h], fill=(70, 140, 60))
    c = w // 2
    brown = (110, 80, 50)
    d.polygon([(c - 26, 84), (c - 3, 10), (c + 3, 10), (c + 26, 84),
               (c + 16, 84), (c, 40), (c - 16, 84)], fill=brown)
    d.line([(c, 2), (c, 10)], fill=brown, width=2)
    d.rectangle([c - 14, 56, c + 14, 59], fill=brown)
    d.rectangle([c - 9, 34, c + 9, 36], fill=brown)
    d.arc([c - 14, 66, c + 14, 96], 180, 360, fill=(200, 225, 250), width=2)
    d.text((4, 2), "Paris", fill=(255, 255, 255), font=_font(11))
    return im, "PNG", {}


def img_starry_night():  # PNG, palette "P", 96x96
    w, h = 96, 96
    im = Image.fromarray(_vgradient(w, h, (15, 30, 90), (40, 70, 150)), "RGB")
    d = ImageDraw.Draw(im)
    for i, (x, y, r) in enumerate([(30, 30, 16), (60, 22, 12), (48, 48, 20)]):
        d.arc([x - r, y - r, x + r, y + r], 20 * i, 20 * i + 250,
              fill=(120, 170, 230), width=3)
    for x, y in [(12, 14), (40, 10), (72, 40), (20, 52), (58, 62)]:
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(250, 220, 70))
    d.ellipse([74, 6, 92, 24], fill=(250, 200, 40))
    d.ellipse([70, 4, 86, 20], fill=(20, 40, 110))
    d.rectangle([0, 78, w, h], fill=(30, 40, 60))
    d.polygon([(8, h), (16, 30), (26, h)], fill=(20, 35, 20))
    for x in range(34, 90, 12):
        d.rectangle([x, 72, x + 8, 80], fill=(60, 60, 80))
        d.point((x + 4, 76), fill=(250, 220, 70))
    im = im.quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return im, "PNG", {}


def img_giant_panda():  # PNG, RGBA with transparency, 80x80
    im = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse([8, 66, 72, 78], fill=(0, 0, 0, 70))  # soft shadow
    d.ellipse([10, 6, 28, 24], fill=(20, 20, 20, 255))
    d.ellipse([52, 6, 70, 24], fill=(20, 20, 20, 255))
    d.ellipse([12, 12, 68, 68], fill=(245, 245, 240, 255), outline=(40, 40, 40, 255))
    d.ellipse([22, 28, 36, 44], fill=(20, 20, 20, 255))
    d.ellipse([44, 28, 58, 44], fill=(20, 20, 20, 255))
    d.ellipse([27, 33, 31, 37], fill=(255, 255, 255, 255))
    d.ellipse([49, 33, 53, 37], fill=(255, 255, 255, 255))
    d.ellipse([35, 46, 45, 53], fill=(20, 20, 20, 255))
    d.arc([32, 50, 48, 60], 20, 160, fill=(20, 20, 20, 255), width=2)
    d.rectangle([60, 58, 78, 64], fill=(90, 170, 70, 160))  # translucent bamboo
    return im, "PNG", {}


def img_neuschwanstein():  # JPEG, RGB, 120x90
    w, h = 120, 90
    im = Image.fromarray(_vgradient(w, h, (120, 170, 230), (225, 235, 245)), "RGB")
    d = ImageDraw.Draw(im)
    d.polygon([(0, 90), (0, 60), (30, 48), (70, 58), (120, 44), (120, 90)],
              fill=(50, 110, 60))
    d.polygon([(0, 90), (0, 75), (60, 66), (120, 78), (120, 90)], fill=(35, 85, 45))
    white = (235, 232, 225)
    roof = (60, 80, 130)
    d.rectangle([40, 34, 80, 62], fill=white)
    for x0, top in [(36, 22), (56, 14), (78, 26)]:
        d.rectangle([x0, top, x0 + 8, 62], fill=white)
        d.polygon([(x0 - 2, top), (x0 + 4, top - 14), (x0 + 10, top)], fill=roof)
    for x in range(44, 78, 6):
        d.rectangle([x, 42, x + 2, 47], fill=(80, 70, 60))
    return im, "JPEG", {"quality": 85}


def img_mount_everest():  # PNG, grayscale "L", 128x96
    w, h = 128, 96
    g = np.linspace(230, 140, h)[:, None] * np.ones((1, w))
    im = Image.fromarray(g.round().astype(np.uint8), "L")
    d = ImageDraw.Draw(im)
    d.polygon([(0, 96), (0, 70), (30, 50), (52, 58), (78, 12), (102, 46),
               (128, 38), (128, 96)], fill=90)
    d.polygon([(66, 32), (78, 12), (92, 32), (84, 28), (78, 34), (72, 28)], fill=250)
    d.polygon([(0, 96), (0, 84), (40, 74), (90, 82), (128, 70), (128, 96)], fill=55)
    d.text((4, 2), "8848.86 m", fill=20, font=_font(10))
    return im, "PNG", {}


def img_golden_gate():  # JPEG, RGB, 160x120
    w, h = 160, 120
    im = Image.fromarray(_vgradient(w, h, (170, 195, 220), (230, 230, 235)), "RGB")
    d = ImageDraw.Draw(im)
    d.rectangle([0, 84, w, h], fill=(40, 90, 140))
    orange = (192, 54, 44)
    for x in (40, 120):
        d.rectangle([x - 3, 20, x + 3, 92], fill=orange)
        d.rectangle([x - 5, 34, x + 5, 37], fill=orange)
        d.rectangle([x - 5, 54, x + 5, 57], fill=orange)
    d.rectangle([0, 70, w, 74], fill=orange)
    d.arc([40, -36, 120, 66], 0, 180, fill=orange, width=2)  # sagging main cable
    d.line([(0, 60), (40, 16)], fill=orange, width=2)
    d.line([(120, 16), (160, 60)], fill=orange, width=2)
    for x in range(48, 116, 8):
        cable_y = 15 + 51 * (1 - ((x - 80) / 40) ** 2) ** 0.5
        d.line([(x, int(cable_y)), (x, 70)], fill=orange)
    d.ellipse([-20, 40, 60, 70], fill=(235, 235, 238))  # fog bank
    return im, "JPEG", {"quality": 80}


def img_titanic():  # JPEG, CMYK, 128x80
    w, h = 128, 80
    im = Image.new("CMYK", (w, h), (40, 5, 0, 0))  # pale sky
    d = ImageDraw.Draw(im)
    d.rectangle([0, 56, w, h], fill=(100, 40, 0, 40))  # sea
    d.polygon([(10, 44), (118, 44), (110, 60), (18, 60)], fill=(0, 0, 0, 230))  # hull
    d.rectangle([22, 36, 106, 44], fill=(0, 0, 5, 0))  # superstructure
    for i, x in enumerate(range(34, 100, 18)):
        d.rectangle([x, 18, x + 9, 36], fill=(0, 35, 80, 5))  # buff funnels
        d.rectangle([x, 18, x + 9, 22], fill=(0, 0, 0, 240))  # black tops
    d.line([(14, 44), (14, 10), (116, 10), (116, 44)], fill=(0, 0, 0, 200))
    return im, "JPEG", {"quality": 85}


def img_sao_paulo():  # PNG, RGB, 112x84
    w, h = 112, 84
    im = Image.fromarray(_vgradient(w, h, (250, 170, 90), (120, 80, 150)), "RGB")
    d = ImageDraw.Draw(im)
    rng = np.random.default_rng(SEED)
    x = 0
    while x < w:
        bw = int(rng.integers(8, 16))
        top = int(rng.integers(22, 60))
        shade = int(rng.integers(40, 80))
        d.rectangle([x, top, x + bw - 1, h], fill=(shade, shade, shade + 20))
        for wy in range(top + 3, h - 2, 5):
            for wx in range(x + 2, x + bw - 2, 4):
                if rng.random() < 0.5:
                    d.point((wx, wy), fill=(255, 230, 140))
        x += bw + 1
    d.text((4, 2), "SP", fill=(255, 255, 255), font=_font(12))
    return im, "PNG", {}


def img_voyager():  # PNG, 16-bit grayscale "I;16", 96x96
    n = 96
    rng = np.random.default_rng(SEED + 1)
    arr = np.full((n, n), 1200, np.float64)  # deep-space background
    ys, xs = rng.integers(0, n, 40), rng.integers(0, n, 40)
    arr[ys, xs] = rng.integers(20000, 65535, 40)
    yy, xx = np.mgrid[0:n, 0:n]
    # high-gain antenna: radial gradient disc
    r = np.hypot(xx - 48, yy - 40)
    dish = r < 22
    arr[dish] = 60000 - (r[dish] / 22.0) * 30000
    # bus and magnetometer boom
    arr[58:70, 42:54] = 38000
    arr[62:64, 54:92] = 50000
    arr[68:90, 30:32] = 45000
    im = Image.fromarray(arr.clip(0, 65535).astype(np.uint16))
    assert im.mode == "I;16", im.mode
    return im, "PNG", {}


def img_saturn():  # PNG, RGB, 144x96
    w, h = 144, 96
    im = Image.new("RGB", (w, h), (5, 5, 20))
    d = ImageDraw.Draw(im)
    rng = np.random.default_rng(SEED + 2)
    for _ in range(30):
        d.point((int(rng.integers(0, w)), int(rng.integers(0, h))), fill=(220, 220, 255))
    d.ellipse([12, 38, 132, 60], outline=(200, 180, 140), width=3)  # ring, back
    d.ellipse([46, 20, 98, 72], fill=(225, 190, 120))
    for y, col in [(34, (200, 160, 100)), (44, (210, 175, 110)), (56, (190, 150, 95))]:
        d.line([(50, y), (94, y)], fill=col, width=2)
    d.arc([12, 38, 132, 60], 0, 180, fill=(230, 210, 170), width=3)  # ring, front
    return im, "PNG", {}


def img_sagrada():  # JPEG, RGB, 96x120 (portrait)
    w, h = 96, 120
    im = Image.fromarray(_vgradient(w, h, (150, 190, 235), (240, 220, 200)), "RGB")
    d = ImageDraw.Draw(im)
    stone = (200, 170, 120)
    d.rectangle([14, 70, 82, 120], fill=stone)
    for x, top in [(18, 24), (32, 12), (50, 12), (64, 24)]:
        d.polygon([(x, 72), (x + 7, top), (x + 14, 72)], fill=stone)
        d.ellipse([x + 4, top - 4, x + 10, top + 2], fill=(230, 60, 60))
    for x in range(22, 80, 10):
        d.rectangle([x, 82, x + 4, 100], fill=(110, 90, 70))
    d.rectangle([80, 30, 82, 70], fill=(90, 90, 90))  # construction crane
    d.line([(60, 30), (95, 30)], fill=(90, 90, 90), width=2)
    return im, "JPEG", {"quality": 85}


def img_monarch_frames():  # animated GIF, 3 frames, 64x64
    frames = []
    for span in (26, 16, 6):
        im = Image.new("RGB", (64, 64), (200, 235, 200))
        d = ImageDraw.Draw(im)
        c = 32
        for side in (-1, 1):
            tip = c + side * span
            d.polygon([(c, 30), (tip, 12), (tip, 34)], fill=(240, 130, 20),
                      outline=(0, 0, 0))
            d.polygon([(c, 34), (c + side * max(span - 6, 4), 36),
                       (c + side * max(span - 10, 3), 52)], fill=(230, 110, 10),
                      outline=(0, 0, 0))
        d.line([(c, 24), (c, 48)], fill=(0, 0, 0), width=3)
        d.line([(c, 24), (c - 5, 16)], fill=(0, 0, 0))
        d.line([(c, 24), (c + 5, 16)], fill=(0, 0, 0))
        frames.append(im.quantize(colors=8, dither=Image.Dither.NONE))
    return frames


def write_images():
    IMAGES.mkdir(parents=True, exist_ok=True)
    for p in IMAGES.iterdir():  # remove stale outputs of earlier runs
        if p.is_file() and p.suffix.lower() in {".png", ".jpg", ".jpeg", ".gif"}:
            p.unlink()

    makers = {
        "eiffel_tower.png": img_eiffel,
        "starry_night.png": img_starry_night,
        "giant_panda.png": img_giant_panda,
        "neuschwanstein.jpg": img_neuschwanstein,
        "mount_everest.png": img_mount_everest,
        "golden_gate_bridge.jpg": img_golden_gate,
        "rms_titanic.jpg": img_titanic,
        "sao_paulo.png": img_sao_paulo,
        "voyager_1.png": img_voyager,
        "saturn.png": img_saturn,
        "sagrada_familia.jpg": img_sagrada,
    }
    for name, fn in makers.items():
        im, fmt, kw = fn()
        im.save(IMAGES / name, fmt, **kw)

    frames = img_monarch_frames()
    frames[0].save(IMAGES / "monarch_butterfly.gif", "GIF", save_all=True,
                   append_images=frames[1:], duration=150, loop=0, disposal=1)

    # --- broken image files for the BAD rows ---
    rng = np.random.default_rng(SEED + 3)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    full = buf.getvalue()
    (IMAGES / "bad_truncated.png").write_bytes(full[: len(full) // 2])
    (IMAGES / "bad_empty.png").write_bytes(b"")
    (IMAGES / "bad_not_image.png").write_bytes(
        b"This is not an image. It is a plain text file that happens to have a\n"
        b".png extension, used to test image decoding failures in fusegen.\n")
    # images/missing_photo.png is intentionally never created.


# ---------------------------------------------------------------------------
# Writing the JSONL
# ---------------------------------------------------------------------------


def row_bytes(kind, payload) -> bytes:
    if kind == "json":
        return json.dumps(payload, ensure_ascii=False).encode("utf-8")
    data, _label = payload
    return data


def check_good_texts():
    """Sanity-check lengths of the good passages (60-180 words, or CJK chars)."""
    for kind, payload, reason, lang in ROWS:
        if reason is not None:
            continue
        text = payload["text"]
        if lang == "zh":
            n = sum(1 for ch in text if unicodedata.category(ch) == "Lo")
            assert 100 <= n <= 400, (payload.get("doc_id"), n)
        else:
            n = len(text.split())
            assert 60 <= n <= 180, (payload.get("doc_id"), n)


def write_jsonl():
    CORPUS.mkdir(parents=True, exist_ok=True)
    with open(JSONL, "wb") as f:  # binary: one line is deliberately not UTF-8
        for kind, payload, _reason, _lang in ROWS:
            b = row_bytes(kind, payload)
            assert b"\n" not in b
            f.write(b + b"\n")


def row_label(kind, payload):
    if kind == "json":
        return payload.get("doc_id", "(no doc_id)")
    return payload[1]


def write_readme():
    bad = [(i, row_label(k, p), r) for i, (k, p, r, _l) in enumerate(ROWS, 1)
           if r is not None]
    n_good = sum(1 for _k, _p, r, _l in ROWS if r is None)
    no_id_line = next(i for i, (k, p, r, _l) in enumerate(ROWS, 1)
                      if k == "json" and r is None and "doc_id" not in p)
    lines = [
        "# fusegen sample corpus",
        "",
        "Generated by `samples/make_sample_corpus.py` (deterministic; rerun it to",
        "rebuild `passages.jsonl`, `images/` and this README). Do not edit by hand.",
        "",
        f"- `passages.jsonl`: {len(ROWS)} lines, one JSON object per line, keys",
        "  `doc_id`, `text`, optional `title`, `image` (path relative to this",
        "  folder) and `domain`.",
        f"- **Expected good rows: {n_good}**; bad rows: {len(bad)}.",
        f"- Line {no_id_line} has no `doc_id` key but is GOOD input: the pipeline",
        "  derives an id for it. It is counted among the good rows.",
        "- Good passages: English plus 3 German, 3 Chinese (simplified) and 1 French;",
        "  12 carry an image (PNG RGB, JPEG RGB, palette PNG, RGBA PNG, grayscale L,",
        "  CMYK JPEG, 16-bit I;16 PNG, 3-frame animated GIF).",
        "- Some good rows deliberately lack `title` (5) or `domain` (3).",
        "",
        "## Bad rows",
        "",
        "Line numbers are 1-based. Rows with an image problem have otherwise valid",
        "text; they are listed as bad because the referenced image cannot be used.",
        "",
        "| line | doc_id | what is wrong |",
        "|-----:|--------|---------------|",
    ]
    for i, label, reason in bad:
        lines.append(f"| {i} | `{label}` | {reason} |")
    lines += [
        "",
        "Note: the duplicate-doc_id row reuses a good id, so it does not start with",
        "`bad-`; the first occurrence (the good row) is the one to keep.",
        "",
        "## Licence",
        "",
        "All passage texts were written for this project and are released under",
        "CC0 1.0 (public domain dedication). The images are simple drawings",
        "generated by the script and are also CC0.",
        "",
    ]
    README.write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------
# Independent validation of what was written
# ---------------------------------------------------------------------------


def validate():
    """Re-read the files from disk and classify every line."""
    results = []  # (line_no, label, problem or None)
    seen_ids, seen_texts = {}, {}
    with open(JSONL, "rb") as f:
        raw_lines = f.read().split(b"\n")
    assert raw_lines[-1] == b""
    for n, raw in enumerate(raw_lines[:-1], 1):
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            results.append((n, "?", "invalid utf-8"))
            continue
        try:
            obj = json.loads(s)
        except json.JSONDecodeError:
            results.append((n, "?", "invalid json"))
            continue
        label = obj.get("doc_id", "(no doc_id)")
        text = obj.get("text")
        problem = None
        if not isinstance(text, str):
            problem = "text not a string"
        elif not text.strip():
            problem = "empty/whitespace text"
        elif "\x00" in text:
            problem = "NUL in text"
        elif len(text) > MAX_TEXT_CHARS:
            problem = "text too long"
        elif "doc_id" in obj and obj["doc_id"] in seen_ids:
            problem = f"duplicate doc_id (first on line {seen_ids[obj['doc_id']]})"
        elif text in seen_texts:
            problem = f"duplicate text (first on line {seen_texts[text]})"
        elif "image" in obj:
            p = CORPUS / obj["image"]
            if not p.is_file():
                problem = "image missing"
            else:
                try:
                    with Image.open(p) as im:
                        im.load()
                except Exception as e:  # noqa: BLE001
                    problem = f"image unreadable ({type(e).__name__})"
        if problem is None:
            if "doc_id" in obj:
                seen_ids[obj["doc_id"]] = n
            seen_texts[text] = n
        results.append((n, label, problem))
    return results


def main() -> int:
    check_good_texts()
    write_images()
    write_jsonl()
    write_readme()

    results = validate()
    expected_bad = {i for i, (_k, _p, r, _l) in enumerate(ROWS, 1) if r is not None}
    found_bad = {n for n, _l, p in results if p is not None}
    assert found_bad == expected_bad, (sorted(found_bad ^ expected_bad))

    n_lines = len(results)
    n_bad = len(found_bad)
    print(f"lines:     {n_lines}")
    print(f"good rows: {n_lines - n_bad}")
    print(f"bad rows:  {n_bad}")
    print("bad rows (line, doc_id, reason):")
    for i, (k, p, r, _l) in enumerate(ROWS, 1):
        if r is not None:
            print(f"  {i:>3}  {row_label(k, p):<22} {r}")
    print("images:")
    for p in sorted(IMAGES.iterdir()):
        try:
            with Image.open(p) as im:
                extra = f", {im.n_frames} frames" if getattr(im, "n_frames", 1) > 1 else ""
                desc = f"{im.format} mode={im.mode} size={im.size[0]}x{im.size[1]}{extra}"
                try:
                    im.load()
                except Exception as e:  # noqa: BLE001
                    desc += f" (header OK, load() fails: {type(e).__name__})"
        except Exception as e:  # noqa: BLE001
            desc = f"(not openable: {type(e).__name__})"
        print(f"  {p.relative_to(CORPUS)!s:<32} {p.stat().st_size:>6} B  {desc}")
    total = sum(fp.stat().st_size for fp in HERE.rglob("*") if fp.is_file())
    print(f"total bytes of samples/: {total}")
    assert total < 400 * 1024, total
    return 0


if __name__ == "__main__":
    sys.exit(main())
